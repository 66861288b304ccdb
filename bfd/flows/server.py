"""Prefect's temporary API server, started ahead of the flows that need it.

Without ``PREFECT_API_URL`` a flow starts a temporary server (a uvicorn process, several
seconds) on its first call, after the command has imported torch, timm and the flows.
``start_early`` starts the same server in the background first, so that its start-up overlaps
those imports; the flows then find it running, exactly as if they had started it themselves:
the same server, the same recorded runs. Importing this module imports no Prefect.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

_starting: list[threading.Thread] = []
# Where a user sets the heartbeat interval (the second, Prefect's legacy name).
_HEARTBEAT_ENV = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


def start_early() -> None:
    """Starts the temporary server in a background thread, when the flows will need one."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    # A start that fails here is retried, and its error reported, by the flow's own start.
    thread = threading.Thread(target=SubprocessASGIServer().start, name="bfd-prefect-server",
                              daemon=True)
    thread.start()
    _starting.append(thread)


def wait_started() -> None:
    """Waits for ``start_early``'s server to answer; call it before the first flow runs (a
    flow that found the server starting would not wait for it)."""
    while _starting:
        _starting.pop().join()


@contextlib.contextmanager
def temporary_server_settings() -> Iterator[None]:
    """Prefect settings of flows run against the temporary server: no flow-run heartbeats,
    unless the user set their interval.

    A flow run's heartbeat thread sleeps in steps of a second, and the flow waits for it when
    it ends: 0-1 s of idle wall time per flow run, three of them in an audit (extract,
    decompose, audit). Heartbeats let a long-running server tell a crashed flow run from a
    live one; the temporary server ends with the command, so it can tell nothing from them.
    Where ``PREFECT_API_URL`` names a server, the flows send them as always.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        temporary_settings,
    )

    if (PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value()
            or any(name in os.environ for name in _HEARTBEAT_ENV)):
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
