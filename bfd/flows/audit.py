"""Flow ``audit``: extract -> decompose -> publish, as one flow run with subflows."""

from __future__ import annotations

from prefect import flow

from bfd.flows.decompose import decompose
from bfd.flows.extract import extract, store_root
from bfd.flows.runners import task_runner

DEMO_CONFIG = {
    "model": "vit_tiny_patch16_224",
    "weights": "random",
    "images": "samples",
    "n_images": 64,
    "layers": "all",
    "sites": ("attn_in", "resid"),
    "dtype": "float16",
}


@flow(name="audit", log_prints=True)
def audit(
    config: dict,
    store: str | None = None,
    workers: int = 1,
    dask_address: str | None = None,
    gpu_resources: bool = False,
    decompose_options: dict | None = None,
) -> dict[str, str]:
    """One audit of one model: its activations (reused where already stored), its BFD and
    its rows in the tables.

    Args:
        config: fields of ``bfd.tasks.extract.ExtractConfig``.
        store: store root; ``$BFD_STORE`` or ``./bfd-store`` when None.
        workers: local extraction workers (processes when > 1).
        dask_address: run extraction shards and decomposition graphs on this Dask cluster.
        gpu_resources: ask the cluster for one ``GPU`` resource per shard task.
        decompose_options: keyword options of the ``decompose`` flow (prefix, seed, ...);
            its ``device`` is the extraction's unless given.

    Returns:
        The run id and the paths written.
    """
    root = store_root(store)
    runner = task_runner(workers, dask_address)
    run_id = extract.with_options(task_runner=runner)(config, root, gpu_resources)
    options = {"device": config.get("device", "auto"), **(decompose_options or {})}
    written = decompose(run_id, root, dask_address=dask_address, **options)
    return {"run_id": run_id, "store": root, **written}
