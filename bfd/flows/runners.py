"""Task runners of the flows: one in-process worker, K local worker processes, or an
existing Dask cluster (prefect-dask)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from prefect.task_runners import ThreadPoolTaskRunner

CONNECT_TIMEOUT_S = 3.0


def capped_workers(workers: int, device: str = "cpu") -> tuple[int, str | None]:
    """``workers`` capped at what the machine can run side by side: its cores on the CPU, its
    GPUs on CUDA (each worker takes one). More would only compete for them.

    Returns:
        The number of workers, and a warning when it was capped.

    Raises:
        ValueError: If ``workers`` is below 1.
    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1; got {workers}")
    what, limit = "cores", os.cpu_count() or 1
    if device.startswith("cuda"):
        import torch

        what, limit = "GPUs", max(1, torch.cuda.device_count())
    if workers <= limit:
        return workers, None
    return limit, f"--workers {workers} is more than the {limit} {what} here; using {limit}"


def check_dask_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast when no Dask scheduler answers at ``address`` (a TCP connect, not a client:
    a client waits 30 s before it gives up).

    Addresses of other transports (``ucx://``, ``inproc://``) are left to Dask.

    Raises:
        ValueError: If a TCP or TLS address is not ``[tcp://]host:port``.
        ConnectionError: If nothing accepts a connection there within ``timeout`` seconds.
    """
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls"):
        return
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ValueError(f"--dask-address must be tcp://host:port; got {address!r}")
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s "
            f"({e.strerror or e}); start it, or drop --dask-address to run locally") from None


def task_runner(workers: int = 1, dask_address: str | None = None):
    """The task runner for ``workers`` local workers or the cluster at ``dask_address``.

    Local workers above one are separate processes (a forward holds the GIL-free cores of
    one process; K processes give K independent model copies, one per GPU where there are
    GPUs). Each worker runs one task at a time.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    if workers == 1:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": None},
    )
