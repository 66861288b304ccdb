"""Progress of long flows, for whoever runs them in-process (the CLI's progress bars).

Flow parameters must serialise, so a callback cannot be one: the CLI registers a listener
here instead, and flows report ``(stage, done, total, detail)`` to it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[str, int, int, dict], None]
# Stages that are events rather than work: no progress bar, no progress artifact. ``notice``:
# a line for the user; ``audit``: an audit's row being written (``recording``);
# ``checkpoint``: a checkpoint audited; ``waiting``: a wait for another process computing a
# run (``waiting`` with its run id, then ``waited``).
EVENTS = frozenset({"notice", "audit", "checkpoint", "waiting"})
_listeners: list[Listener] = []
_lock = threading.Lock()


def report(stage: str, done: int, total: int, **detail) -> None:
    """Tell every listener that ``done`` of ``total`` units of ``stage`` are finished."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(stage, done, total, detail)


@contextmanager
def recording(row: dict) -> Iterator[None]:
    """An audit's row being written (``bfd.tasks.audits.audit_row``'s ``writing``): stage
    ``audit`` reported with 0 done before the write and 1 after, its ``detail`` the row
    (``audit``) and whether it was written (``written``); the CLI holds Ctrl-C meanwhile
    (``bfd.cli_interrupt.audit_progress``)."""
    report("audit", 0, 1, audit=row)
    written = False
    try:
        yield
        written = True
    finally:
        report("audit", 1, 1, audit=row, written=written)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Register ``listener`` for the duration of the block."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def waiting(line: str, run_id: str | None = None) -> None:
    """A flow waiting for another process's lock (``bfd.storage.run_lock``,
    ``series_lock``): ``line`` goes to the flow run's log and, as a ``notice``, to the
    listeners (the command's stderr), once, when the wait starts. With ``run_id`` (the wait
    is for that run's lock) the listeners also get stage ``waiting`` with 0 of 1 done, and
    ``waited`` reports its end (Ctrl-C's line meanwhile: ``bfd.cli_interrupt``)."""
    from prefect import get_run_logger

    get_run_logger().info(line)
    report("notice", 0, 0, text=line)
    if run_id is not None:
        report("waiting", 0, 1, run_id=run_id)


def waited(run_id: str) -> None:
    """The end of a wait that ``waiting`` reported with ``run_id``: the lock is taken."""
    report("waiting", 1, 1, run_id=run_id)
