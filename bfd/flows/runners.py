"""Task runners of the flows: one in-process worker, K local worker processes, or an
existing Dask cluster (prefect-dask)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from bfd.files import local_cores

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


# the cluster's workers are counted every WATCH_EVERY_S seconds; a cluster without one for
# WORKERLESS_S seconds is said (trial 30: an audit hung without a line while it had none)
WATCH_EVERY_S = 5.0
WORKERLESS_S = 20.0


@contextmanager
def workers_watched(address: str | None, say: Callable[[str], None]) -> Iterator[None]:
    """While the block runs on the Dask cluster at ``address`` (None: nothing to watch), a
    line to ``say`` when the cluster has had no worker for ``WORKERLESS_S`` seconds (its
    tasks wait, and the command with them, until a worker joins), and one when workers
    return. Its own client of the cluster, on a daemon thread; a scheduler it cannot reach
    is left to the flow's client, which says it."""
    if not address:
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        from distributed import Client

        try:
            client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except Exception:  # noqa: BLE001 - the flow's own client reports it
            return
        since, said = None, False
        try:
            while not stop.wait(WATCH_EVERY_S):
                try:
                    workers = len(client.scheduler_info()["workers"])
                except Exception:  # noqa: BLE001 - a scheduler lost: the flow says it
                    continue
                if workers:
                    if said:
                        say(f"the Dask cluster at {address} has {workers} worker(s) again; "
                            "going on")
                    since, said = None, False
                    continue
                since = since or time.monotonic()
                if not said and time.monotonic() - since >= WORKERLESS_S:
                    said = True
                    say(f"waiting: the Dask cluster at {address} has had no worker for "
                        f"{WORKERLESS_S:.0f} s, so nothing runs; start one (dask worker "
                        f"{address}) or stop with Ctrl-C")
        finally:
            client.close()

    thread = threading.Thread(target=watch, name="bfd-dask-workers", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2 * CONNECT_TIMEOUT_S)


def task_runner(workers: int = 1, dask_address: str | None = None, device: str = "cpu"):
    """The extraction's task runner for ``workers`` local workers or the cluster at
    ``dask_address``.

    Local workers above one are separate processes (a forward holds the GIL-free cores of
    one process; K processes give K independent model copies, one per GPU where there are
    GPUs). Each worker runs one task at a time. One worker is this process: one shard at a
    time on the CPU, two side by side on a GPU (``bfd.tasks.extract.shard_slots`` of
    ``device``, the run's device resolved).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    if workers == 1:
        from prefect.task_runners import ThreadPoolTaskRunner

        from bfd.tasks.extract import shard_slots

        return ThreadPoolTaskRunner(max_workers=shard_slots(device))
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": None},
    )


def user_thread_pool() -> int | None:
    """The thread pool size a user set for every flow (Prefect's setting
    ``PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS``: the environment or a profile); None
    when unset, or where Prefect is not installed (bench/gpu.sh's device machine, whose benches
    call ``one_thread_per_task`` without it)."""
    try:
        from prefect.settings import get_current_settings
    except ImportError:
        return None
    return get_current_settings().tasks.runner.thread_pool_max_workers


def one_thread_per_task(tasks: int, dask_address: str | None = None) -> int | None:
    """``threads`` of the decompose flow's (site, layer) tasks: 1 where they run on this
    machine's threads and at least as many run at once as there are cores, so that each
    computes on its own thread; None (dask's and torch's threads) on a Dask cluster or where
    fewer run at once (a flow of one layer, or a thread pool the user set smaller).

    Each on one thread, the 12 (site, layer) tasks of a 6-layer ViT-S/16 store of 256 images
    took 3.8-4.1 s against 5.3 s with dask's and torch's threads in each (bench/README.md).
    """
    if dask_address:
        return None
    pool = user_thread_pool()
    at_once = min(tasks, pool) if pool else tasks
    return 1 if at_once >= local_cores() else None


def decompose_flow(dask_address: str | None = None):
    """The ``decompose`` flow, its (site, layer) tasks on at most one thread per core; as it
    is (a thread per task) on a Dask cluster, whose tasks wait on the cluster, or where the
    user set Prefect's thread pool size.

    Each task computes on the cores itself; 24 threads on 2 cores only add Prefect's per-task
    overhead and switching (``bfd decompose`` of a 12-layer, 2-image run: its 24 tasks span
    2.1-2.5 s against 3.3-3.9 s with a thread each; bench/README.md). The flow, its tasks
    and their task runs are the same; the tasks start as threads free up.
    """
    from bfd.flows.decompose import decompose

    if dask_address or user_thread_pool():
        return decompose
    from prefect.task_runners import ThreadPoolTaskRunner

    return decompose.with_options(task_runner=ThreadPoolTaskRunner(max_workers=local_cores()))
