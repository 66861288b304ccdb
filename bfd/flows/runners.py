"""Task runners of the flows: one in-process worker, K local worker processes, or an
existing Dask cluster (prefect-dask)."""

from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner


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
