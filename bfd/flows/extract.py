"""Flow ``extract``: a model and a set of images -> per-layer activations in a chunked,
resumable Zarr store, shards fanned out over workers."""

from __future__ import annotations

import contextlib

import dask
from prefect import flow, get_run_logger
from prefect.futures import as_completed

from bfd.faults import store_faults
from bfd.flows import progress
from bfd.flows.prefect_io import resolve_store
from bfd.models import resolve_device
from bfd.storage import Store, completed_shards, run_lock
from bfd.tasks.extract import ExtractConfig
from bfd.tasks.prefect_tasks import extract_shard_task, prepare_run_task


@flow(name="extract", log_prints=True)
def extract(config: dict, store: str | None = None, gpu_resources: bool = False) -> dict:
    """Extract a run's activations; only shards not yet complete are computed.

    Args:
        config: fields of ``ExtractConfig`` (model, weights, images, layers, sites, ...).
        store: store root; else the Prefect Variable ``bfd_store``, else ``$BFD_STORE``
            (outside a deployment also ``./bfd-store``).
        gpu_resources: ask the Dask cluster for one ``GPU`` resource per shard task.

    Returns:
        ``run_id``: the run id; ``extracted``: the shards extracted by this run of the flow
        (none when every shard was stored intact); ``repaired``: those of them that had been
        marked done but were damaged (a chunk file gone or cut short).
    """
    logger = get_run_logger()
    cfg = ExtractConfig(**config)
    root = resolve_store(store)
    with store_faults(root):  # a full or read-only disk: one line (trial 26 F7)
        # the run's lock, from its planning to its end (taken once its id is known): a second
        # extraction of the run waits for this one, then finds its shards done
        with contextlib.ExitStack() as held:
            plan = prepare_run_task(root, cfg, lambda rid: held.enter_context(
                run_lock(Store(root), rid, progress.waiting)))
            per_shard = {s.index: s for s in plan.shards}
            todo = [per_shard[k] for k in plan.pending]
            logger.info("run %s: %d images, %d shards, %d to do", plan.run_id, plan.n_images,
                        len(plan.shards), len(todo))
            for fault in plan.damaged:
                logger.warning("damaged, extracted again: %s", fault)
                progress.report("notice", 0, 0, text=f"damaged, extracted again: {fault}")
            if todo:
                progress.report("notice", 0, 0, text=plan.summary())
            done_images = plan.n_images - sum(s.size for s in todo)
            progress.report("extract", done_images, plan.n_images, run_id=plan.run_id)
            cfg_worker = cfg
            if len(todo) and cfg.device == "auto":
                # resolve here, so every worker gets the same answer as the planner
                cfg_worker = ExtractConfig(**{**cfg.to_dict(), "device": resolve_device("auto")})
            annotate = (dask.annotate(resources={"GPU": 1}) if gpu_resources
                        else contextlib.nullcontext())
            with annotate:
                futures = [
                    extract_shard_task.submit(root, plan.run_id, cfg_worker, s, plan.layers,
                                              list(plan.records[s.start:s.stop]))
                    for s in todo
                ]
            skipped = 0
            for future in as_completed(futures):
                result = future.result()
                skipped += result["skipped"]
                done_images += result["images"]
                progress.report("extract", done_images, plan.n_images, run_id=plan.run_id)
            missing = set(per_shard) - completed_shards(Store(root), plan.run_id, plan.shards)
            if missing:
                raise RuntimeError(f"run {plan.run_id}: shards {sorted(missing)} did not complete")
            logger.info("run %s complete (%d images skipped this time)", plan.run_id, skipped)
            return {"run_id": plan.run_id, "extracted": list(plan.pending),
                    "repaired": list(plan.repaired), "n_shards": len(plan.shards)}
