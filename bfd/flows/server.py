"""Prefect's temporary API server, started ahead of the flows that need it.

Without ``PREFECT_API_URL`` a flow starts a temporary server (a uvicorn process, several
seconds) on its first call, after the command has imported torch, timm and the flows.
``start_early`` starts the same server in the background first, so that its start-up overlaps
those imports; the flows then find it running, exactly as if they had started it themselves:
the same server, the same recorded runs. Importing this module imports no Prefect.
"""

from __future__ import annotations

import threading

_starting: list[threading.Thread] = []


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
