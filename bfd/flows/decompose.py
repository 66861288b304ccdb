"""Flow ``decompose``: stored activations -> labeled results -> Parquet tables."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.futures import as_completed

from bfd.core.anova import DEFAULT_GROUPS
from bfd.core.model_check_limit import model_check_warning
from bfd.core.uncertainty import DEFAULT_CI_TARGET
from bfd.faults import store_faults
from bfd.flows import progress
from bfd.flows.prefect_io import resolve_store
from bfd.flows.runners import one_thread_per_task
from bfd.storage import (
    Store,
    check_intact,
    layers_rows,
    open_activations,
    read_request,
    run_lock,
)
from bfd.tasks.decompose import (
    DecomposeOptions,
    assemble_results,
    require_extracted,
    require_positions,
)
from bfd.tasks.options import not_decomposable
from bfd.tasks.prefect_tasks import decompose_site_layer_task, publish_task

# What the results carry of their run (besides run_id and the options), so that a results
# Dataset says what made it: from the run request, and from the extraction's attrs.
REQUEST_ATTRS = ("model", "weights", "weights_sha256", "images", "images_sha256", "dtype")
EXTRACTION_ATTRS = ("timm_version", "torch_version", "bfd_version")


def results_attrs(request, activation_attrs) -> dict:
    """What a run's results Dataset says of its request: ``REQUEST_ATTRS``, the model as the
    SQL views spell it (``model_label``: with its ``--model-arg`` options, so that one timm
    name built two ways reads as two models), its input size (``img_size``, one int as in
    ``runs``) and the versions of ``EXTRACTION_ATTRS`` found in ``activation_attrs``."""
    from bfd.storage import model_label, request_columns

    attrs = {k: getattr(request, k) for k in REQUEST_ATTRS}
    attrs["model_label"] = model_label(request.model, request.extra.get("model_args"))
    attrs["img_size"] = request_columns(request)["img_size"]
    return attrs | {k: activation_attrs[k] for k in EXTRACTION_ATTRS if k in activation_attrs}


@flow(name="decompose", log_prints=True)
def decompose(
    run_id: str,
    store: str | None = None,
    prefix: str = "exclude",
    seed: int = 0,
    compute_dtype: str = "float32",
    images_per_task: int | None = None,
    dask_address: str | None = None,
    device: str = "auto",
    jackknife_groups: int = DEFAULT_GROUPS,
    ci_target: float = DEFAULT_CI_TARGET,
) -> dict[str, str]:
    """Decompose every extracted (site, layer) of a run and publish the results.

    Args:
        run_id: the run to decompose (its activations must be complete).
        store: store root; else the Prefect Variable ``bfd_store``, else ``$BFD_STORE``
            (outside a deployment also ``./bfd-store``).
        prefix: "exclude" or "include" prefix tokens as positions (docs/method.md).
        seed: seed of the split-half and shuffle controls.
        compute_dtype: pass-2 projection dtype.
        images_per_task: images per dask task; the stored chunks when None.
        dask_address: run the dask graphs on this cluster instead of local threads.
        device: where the passes run: auto (CUDA when seen; the CPU on a cluster), cpu, cuda.
        jackknife_groups: image groups G of the intervals (0: none; docs/method.md).
        ci_target: interval half-width the main shares should reach.

    Returns:
        What was written, by name (results group and table files).

    The run's lock (``bfd.storage.run_lock``) is held throughout: a decomposition of a run
    that another process is computing waits for it (``bfd decompose`` holds it already).
    """
    logger = get_run_logger()
    root = resolve_store(store)
    with store_faults(root):  # a full or read-only disk: one line (trial 26 F7)
        options = DecomposeOptions(prefix=prefix, seed=seed, compute_dtype=compute_dtype,
                                   images_per_task=images_per_task, device=device,
                                   jackknife_groups=jackknife_groups, ci_target=ci_target)
        refused = not_decomposable(Store(root), run_id, options)  # also: a run of the store
        if refused:
            raise ValueError(refused)
        with run_lock(Store(root), run_id, progress.waiting):
            acts = open_activations(Store(root), run_id)
            require_positions(acts, run_id, options.prefix)  # before the stage begins
            check_intact(Store(root), run_id)
            require_extracted(Store(root), run_id)
            sites = [s for s in ("attn_in", "resid") if s in acts.data_vars]
            layers = [int(v) for v in acts.layer.values]
            threads = one_thread_per_task(len(sites) * len(layers), dask_address)
            futures = [
                decompose_site_layer_task.submit(root, run_id, site, layer, options, dask_address,
                                                 threads)
                for site in sites
                for layer in layers
            ]
            logger.info("decomposing run %s: %d sites x %d layers", run_id, len(sites),
                        len(layers))
            # the stage begins: its bar (and its clock) from now, not from its first pair
            # done (trial 30: on a Dask cluster the bar appeared minutes into the decomposition)
            progress.report("decompose", 0, len(futures))
            parts = []
            for done, future in enumerate(as_completed(futures), start=1):
                parts.append(future.result())
                progress.report("decompose", done, len(futures))
            request = read_request(Store(root), run_id)
            results = assemble_results(parts, {**results_attrs(request, acts.attrs),
                                               "run_id": run_id, **options.to_dict(),
                                               "images_per_task": images_per_task or 0})
            written = publish_task(root, run_id, results, {"decompose": options.to_dict()})
            logger.info("published run %s: %s", run_id, ", ".join(sorted(written)))
            check = model_check_warning(run_id, layers_rows(results).to_pylist())
            if check:  # the check against the model failed (docs/checks.md)
                logger.warning("%s", check)
            return written
