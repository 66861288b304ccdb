"""A lock of the store held by another thread, as another process would hold it: this
process's own thread would enter it again (the locks are reentrant within a thread)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def held_by_another_thread(lock: contextlib.AbstractContextManager) -> Iterator[None]:
    """Hold ``lock`` (``bfd.storage.run_lock(...)``, ``series_lock(...)``) in a thread of its
    own for the block: taken before the block starts, released when it ends."""
    taken, release, failed = threading.Event(), threading.Event(), []

    def hold() -> None:
        try:
            with lock:
                taken.set()
                release.wait()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            failed.append(err)
            taken.set()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    taken.wait()
    if failed:
        raise failed[0]
    try:
        yield
    finally:
        release.set()
        thread.join()
