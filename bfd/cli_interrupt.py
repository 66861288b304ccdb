"""Ctrl-C of a pipeline command (extract, decompose, audit) run as a process: one line, exit
130, within a moment.

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
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable

MESSAGE = "bfd: interrupted; completed shards are kept and a rerun resumes"
EXIT_INTERRUPTED = 130

_ending = threading.Lock()


def _kill_children() -> None:
    """SIGKILL to every process this one started, and theirs (psutil comes with Dask; imported
    by ``end_on_interrupt``, not in a signal handler)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        children = psutil.Process().children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()


def end_now(line_open: Callable[[], bool] = lambda: False, message: str = MESSAGE) -> None:
    """Writes the line, kills the child processes and ends the process with exit 130.

    Args:
        line_open: True when stderr's last line is unfinished (a progress bar): the line
            then starts on a new one.
        message: The line.
    """
    if not _ending.acquire(blocking=False):
        # the other path (handler or watcher) is ending the process already
        threading.Event().wait()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    with contextlib.suppress(Exception):
        newline = "\n" if line_open() else ""
        os.write(sys.stderr.fileno(), f"{newline}{message}\n".encode())
    with contextlib.suppress(Exception):
        _kill_children()
    os._exit(EXIT_INTERRUPTED)


def end_on_interrupt(line_open: Callable[[], bool] = lambda: False,
                     message: str = MESSAGE) -> None:
    """From now on, SIGINT ends this process at once (``end_now``, with ``message``). Call it
    from the main thread of a process that runs one pipeline command and nothing else."""

    import psutil  # noqa: F401 - imported now, not while ending

    def handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        end_now(line_open, message)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGINT, handler)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            if signal.SIGINT in os.read(wake_r, 64):
                end_now(line_open, message)

    threading.Thread(target=watch, name="bfd-interrupt", daemon=True).start()
