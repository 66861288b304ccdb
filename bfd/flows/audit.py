"""Flow ``audit``: extract -> decompose -> publish, as one flow run with subflows."""

from __future__ import annotations

from prefect import flow

from bfd.flows import progress
from bfd.flows.decompose import decompose
from bfd.flows.extract import extract, store_root
from bfd.flows.runners import task_runner
from bfd.tasks.decompose import DecomposeOptions, assemble_results
from bfd.tasks.extract import ExtractConfig
from bfd.tasks.prefect_tasks import decompose_from_forward_task, prepare_run_task, publish_task
from bfd.tasks.stats_only import NOT_STORED

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
    store_activations: bool = True,
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
        store_activations: False: keep no activations; the decomposition's two passes
            run on two forwards over the images (``bfd.tasks.stats_only``). The run gets an
            id of its own, and its request (``runs.config_json``) says
            ``"activations": "not stored"``.

    Returns:
        The run id and the paths written.
    """
    root = store_root(store)
    if not store_activations:
        return _stats_only(config, root, decompose_options)
    runner = task_runner(workers, dask_address)
    run_id = extract.with_options(task_runner=runner)(config, root, gpu_resources)
    options = {"device": config.get("device", "auto"), **(decompose_options or {})}
    written = decompose(run_id, root, dask_address=dask_address, **options)
    return {"run_id": run_id, "store": root, **written}


def _stats_only(config: dict, root: str, decompose_options: dict | None) -> dict[str, str]:
    """The audit without a stored copy: plan the run (request, image manifest, model tensors,
    the store template's metadata), decompose from two forwards, publish."""
    cfg = ExtractConfig(**config)
    cfg = ExtractConfig(**{**cfg.to_dict(), "extra": {**cfg.extra, **NOT_STORED}})
    plan = prepare_run_task(root, cfg)
    progress.report("extract", 0, plan.n_images, run_id=plan.run_id)
    options = DecomposeOptions(**{"device": cfg.device, **(decompose_options or {})})
    parts, images = decompose_from_forward_task(cfg, plan.layers, list(plan.records), options)
    progress.report("extract", plan.n_images, plan.n_images, run_id=plan.run_id)
    results = assemble_results(parts, {"run_id": plan.run_id, **options.to_dict(),
                                       "images_per_task": options.images_per_task or 0})
    # the statuses go to the tables only: no shard is marked done, as no chunk was written
    written = publish_task(root, plan.run_id, results, {"decompose": options.to_dict()},
                           images)
    return {"run_id": plan.run_id, "store": root, **written}
