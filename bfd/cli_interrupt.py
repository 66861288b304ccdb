"""Ctrl-C of a pipeline command (extract, decompose, audit) run as a process: one line, exit
130, within a moment; SIGTERM the same, its line saying ``terminated (SIGTERM)``, exit 143.

Left to Python, Ctrl-C becomes a ``KeyboardInterrupt`` that Prefect's engine catches to
record the crash through its API, while the thread pool waits for the running shard to finish
and the exit handlers stop the temporary server and drain Prefect's log and event queues;
then the interpreter tears down torch, Prefect and Dask. That took 4-7 s with SIGINT sent to
the bfd process alone. A terminal's Ctrl-C also reaches the temporary server (same process
group), which shuts down while Prefect's clients still retry it: minutes, and a page of
errors.

Everything a pipeline command writes survives being killed at any moment (markers and tables
are replaced atomically, ``tests/faults/``), so on SIGINT the command writes its line, kills
its child processes (the temporary server, Dask's nanny and workers) and ends at once with
``os._exit``: nothing computed is lost, and the next run resumes from the completed shards.
The line comes from Python's SIGINT handler, or, while the main thread is inside a long
native call, from a thread woken by the signal's wakeup descriptor.

The line says what the interrupt left: ``MESSAGE`` while shards may be being extracted; in
``bfd audit`` ``NOT_RECORDED`` before its flow starts (its checks) or, for a run already
computed (``bfd.cli_reuse``), before its audit is recorded, ``NOT_RECORDED_SHARDS_KEPT`` in
its flow before the audit is recorded (``NOT_RECORDED_NOTHING_KEPT`` for a stats-only audit,
``--no-store-activations``, which keeps no shards; ``waiting_for`` while it waits for another
process computing its run, which goes on); and from the moment an audit's row is
written a line naming that audit (``recorded``), so that a rerun's second audit of the same
request is not made unknowingly.
The write itself is held from Ctrl-C (``recording``, the ``writing`` of
``bfd.tasks.audits.audit_row``; the flow ``audit`` reaches it through its progress listeners,
``audit_progress``): a SIGINT that lands while the row is being written ends the process once
it is written, with the line naming it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

MESSAGE = "bfd: interrupted; completed shards are kept and a rerun resumes"
NOT_RECORDED = "bfd: interrupted; no audit was recorded"
# the flow audit's before its audit is recorded (only then written: bfd.tasks.audits.audit_row)
NOT_RECORDED_SHARDS_KEPT = f"{NOT_RECORDED}; completed shards are kept and a rerun resumes"
# the same for a stats-only audit (--no-store-activations): its forwards keep nothing
NOT_RECORDED_NOTHING_KEPT = (f"{NOT_RECORDED}; a stats-only run keeps nothing of its work: a "
                             "rerun computes it again from the start")
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process it ended

_ending = threading.Lock()
_ender: list[int] = []  # the thread ending the process
# what Ctrl-C says and whether it waits (``hold``); the handler and the watcher decide under
# this lock (re-entrant: the handler runs on the main thread, which may hold it)
_lock = threading.RLock()
_state: dict[str, Any] = {"message": MESSAGE, "line_open": lambda: False, "held": 0,
                          "pending": False}


def say(message: str | Callable[[], str]) -> None:
    """The line Ctrl-C writes from now on; a callable: called then, for the line (what it
    says is known only then: ``bfd serve``'s runs in progress)."""
    with _lock:
        _state["message"] = message


def message() -> str:
    """The line Ctrl-C writes now (also ``bfd.cli.main``'s, when a command run in-process ends
    in ``KeyboardInterrupt``)."""
    return _text(_state["message"])


def _text(message: str | Callable[[], str]) -> str:
    if not callable(message):
        return message
    try:
        return message()
    except Exception:  # noqa: BLE001 - Ctrl-C still ends, with the plain line
        return MESSAGE


def recorded(row: Mapping[str, Any]) -> str:
    """The line of Ctrl-C once the audit ``row`` (``bfd.tasks.audits.audit_row``) is written."""
    status = "" if row["status"] == "complete" else f" as {row['status']}"
    run = f" (run {row['run_id']})" if row.get("run_id") else ""
    return (f"bfd: interrupted after audit {row['audit_id']} of series {row['series']} "
            f"(step {row['step']}) was recorded{status}{run}; a rerun records another audit")


def hold() -> None:
    """Ctrl-C from now on waits for ``release`` (nested holds: the outermost)."""
    with _lock:
        _state["held"] += 1


def release(line: str | None = None) -> None:
    """Ends a ``hold``: the line becomes ``line`` when given, and a Ctrl-C that came meanwhile
    ends the process now, with it."""
    with _lock:
        if line is not None:
            _state["message"] = line
        _state["held"] -= 1
        if not _state["held"] and _state["pending"]:
            end_now(_state["line_open"], _state["message"])


@contextlib.contextmanager
def recording(row: dict[str, Any]) -> Iterator[None]:
    """The write of the audit ``row`` (``bfd.tasks.audits.audit_row``'s ``writing``), held
    from Ctrl-C; once written, Ctrl-C's line names the audit (``recorded``)."""
    hold()
    written = False
    try:
        yield
        written = True
        with _lock:
            _state["recorded"] = dict(row)
    finally:
        release(recorded(row) if written else None)


def forget_recorded() -> None:
    """A new command starts: no audit of it is recorded yet (``failed_after_recording``)."""
    with _lock:
        _state.pop("recorded", None)


def failed_after_recording() -> str | None:
    """The line of ``bfd audit`` when it fails (an error, not Ctrl-C) after its audit's row
    was written complete (``recording``), naming that audit: the error's own line follows it
    (the report, the catalog read after the audit), and a rerun would record a second audit;
    None when no row was written, or a row of a failed audit (the error is the audit's)."""
    row = _state.get("recorded")
    if row is None:
        return None
    run = f" (run {row['run_id']})" if row.get("run_id") else ""
    said = f"bfd: audit {row['audit_id']} of series {row['series']} (step {row['step']})"
    if row.get("status") != "complete":  # the error is the audit's own, its row says so
        return None
    return (f"{said} was recorded{run}, but the command failed after it (below): the audit is "
            "kept, and a rerun records another audit")


class CheckpointsInterrupt:
    """A ``bfd.flows.progress`` listener of ``bfd audit-checkpoints`` and its Ctrl-C line
    (``line``): each audit's row write held from Ctrl-C, as ``audit_progress`` holds it, and
    the audits this command recorded named, so that the user knows what a rerun skips."""

    def __init__(self) -> None:
        self.recorded: list[Mapping[str, Any]] = []

    def __call__(self, stage: str, done: int, total: int, detail: dict) -> None:  # noqa: ARG002
        if stage != "audit":
            return
        if not done:
            hold()
            return
        if detail["written"]:
            self.recorded.append(detail["audit"])
        release()

    def line(self) -> str:
        rows = self.recorded
        if not rows:
            return NOT_RECORDED_SHARDS_KEPT
        steps = ", ".join(str(r["step"]) for r in rows)
        failed = [str(r["step"]) for r in rows if r["status"] != "complete"]
        not_complete = f", step(s) {', '.join(failed)} as failed" if failed else ""
        return (f"bfd: interrupted after {len(rows)} audit(s) of series {rows[0]['series']} "
                f"were recorded (step(s) {steps}{not_complete}); the checkpoint in progress "
                "was not audited: a rerun audits it and the others not yet audited (its "
                "completed shards are kept)")


def waiting_for(run_id: str) -> str:
    """Ctrl-C's line while an audit waits for another process computing its run."""
    return (f"{NOT_RECORDED} while it waited for another process computing run {run_id}; "
            "that process goes on, and a rerun reuses the run once it is published")


def audit_progress(stage: str, done: int, total: int, detail: dict) -> None:  # noqa: ARG001
    """A ``bfd.flows.progress`` listener: the flow's stage ``audit`` (``progress.recording``,
    its audit's row being written) as ``recording``; its stage ``waiting`` (a wait for
    another process computing its run: ``progress.waiting``, ``waited``) as ``waiting_for``
    until the wait ends, then the line before it again."""
    if stage == "waiting":
        with _lock:
            if not done:
                _state["before_wait"] = _state["message"]
                _state["message"] = waiting_for(detail["run_id"])
            elif "before_wait" in _state:
                _state["message"] = _state.pop("before_wait")
        return
    if stage != "audit":
        return
    if not done:
        hold()
    else:
        if detail["written"]:
            with _lock:
                _state["recorded"] = dict(detail["audit"])
        release(recorded(detail["audit"]) if detail["written"] else None)


def terminated() -> bool:
    """Whether the end under way is SIGTERM's (its line ``bfd: terminated (SIGTERM)``), not
    Ctrl-C's: for a line that says it elsewhere too (``bfd serve``'s, in Prefect)."""
    return _state.get("signum") == signal.SIGTERM


def _interrupted(signum: int = signal.SIGINT) -> None:
    """SIGINT or SIGTERM: ends the process now, or once the ``hold`` is released."""
    with _lock:
        if signum == signal.SIGTERM:
            _state["signum"] = signum
        if _state["held"]:
            _state["pending"] = True
            return
        end_now(_state["line_open"], _state["message"])


# The Prefect flow runs this process ran (``note_flow_run``), innermost last: ending the
# process with ``os._exit`` skips Prefect's own end of them, which left them Running for good.
_flow_runs: list[str] = []
# How long the end waits for the API to take their Crashed states; it never waits for more.
CRASH_TIMEOUT_S = 2.0


def note_flow_run(stage: str, done: int, total: int, detail: dict) -> None:  # noqa: ARG001
    """A ``bfd.flows.progress`` listener: keeps the id of the flow run that reports (its flows
    report from its thread or its tasks'), for ``_crash_flow_runs``. Without Prefect
    imported there is no flow run (an audit recorded without Prefect): none imported here."""
    if "prefect" not in sys.modules:
        return
    from prefect.runtime import flow_run

    with contextlib.suppress(Exception):
        found = flow_run.id
        if found and str(found) not in _flow_runs:
            _flow_runs.append(str(found))


def _crash_flow_runs(line: str) -> None:
    """Sets each flow run this process ran (``note_flow_run``) that its API still has
    running (or pending) to ``Crashed``, its message ``line``: what Prefect's engine does
    when a run ends by Ctrl-C, skipped by ``os._exit``. A thread of its own, waited for at
    most ``CRASH_TIMEOUT_S``: a temporary server the same Ctrl-C stopped is not retried."""
    if not _flow_runs:
        return

    def crash() -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        with get_client(sync_client=True) as client:
            # the innermost (a subflow) first, then the flow runs it ran in: a flow that
            # reports no progress itself (the audit around its extract and decompose) was
            # left Running (trial 17)
            todo, seen = list(reversed(_flow_runs)), set()
            while todo:
                run_id = todo.pop(0)
                if run_id in seen:
                    continue
                seen.add(run_id)
                with contextlib.suppress(Exception):
                    run = client.read_flow_run(run_id)
                    if run.state is not None and run.state.type.value in ("RUNNING", "PENDING"):
                        client.set_flow_run_state(run_id, Crashed(message=line), force=True)
                    if run.parent_task_run_id is not None:
                        todo.append(str(client.read_task_run(run.parent_task_run_id).flow_run_id))

    thread = threading.Thread(target=_quietly, args=(crash,), name="bfd-crash-runs",
                              daemon=True)
    thread.start()
    thread.join(CRASH_TIMEOUT_S)


def _quietly(fn: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):
        fn()


def _kill_children() -> None:
    """SIGKILL to every process this one started, and theirs (psutil comes with Dask; imported
    by ``end_on_interrupt``, not in a signal handler)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        children = psutil.Process().children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()


def end_now(line_open: Callable[[], bool] = lambda: False,
            message: str | Callable[[], str] = MESSAGE) -> None:
    """Writes the line, kills the child processes and ends the process with exit 130.

    Args:
        line_open: True when stderr's last line is unfinished (a progress bar): the line
            then starts on a new one.
        message: The line (a callable: called for it).
    """
    if not _ending.acquire(blocking=False):
        if _ender == [threading.get_ident()]:  # a second Ctrl-C on the thread ending it
            return
        # the other path (handler or watcher) is ending the process already
        threading.Event().wait()
    _ender.append(threading.get_ident())
    terminated = _state.get("signum") == signal.SIGTERM
    line = "bfd: terminated (SIGTERM)" if terminated else "bfd: interrupted"
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    with contextlib.suppress(Exception):
        newline = "\n" if line_open() else ""
        line = _text(message)
        if terminated:  # a batch scheduler's time limit, a service stopped: said as such
            line = line.replace("bfd: interrupted", "bfd: terminated (SIGTERM)", 1)
        os.write(sys.stderr.fileno(), f"{newline}{line}\n".encode())
    with contextlib.suppress(Exception):
        _crash_flow_runs(line.removeprefix("bfd: "))
    with contextlib.suppress(Exception):
        _kill_children()
    os._exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


def end_on_interrupt(line_open: Callable[[], bool] = lambda: False,
                     message: str | None = None) -> None:
    """From now on, SIGINT ends this process at once (``end_now``, with ``message``, when
    given, until ``say`` or an audit's ``recording`` changes it), or after a ``hold``. Call it
    from the main thread of a process that runs one pipeline command and nothing else.

    A SIGINT ignored when the process started stays ignored, as Python itself leaves it: a
    shell without job control starts its background commands (``bfd audit ... &`` in a
    script) so, that a Ctrl-C meant for the script in the foreground spares them (their
    temporary server too: ``bfd.flows.server`` starts it in a session of its own then).
    SIGTERM ends the process in any case."""

    import psutil  # noqa: F401 - imported now, not while ending

    with _lock:
        _state["line_open"] = line_open
        if message is not None:
            _state["message"] = message

    def handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        _interrupted(signum)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, handler)
    # SIGTERM (a batch scheduler's time limit, systemd's stop, kill PID) ended the process
    # with no line and left the temporary server running: the same end as Ctrl-C's, exit 143
    signal.signal(signal.SIGTERM, handler)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            got = os.read(wake_r, 64)
            for signum in (signal.SIGTERM, signal.SIGINT):
                if signum in got:
                    _interrupted(signum)

    threading.Thread(target=watch, name="bfd-interrupt", daemon=True).start()
