"""An audit's run without stored activations (``bfd audit --no-store-activations``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bfd.flows import progress
from bfd.flows.decompose import results_attrs
from bfd.output import count
from bfd.storage import Store, open_activations, read_request, results_path, with_stats_only
from bfd.tasks.audits import computed_run, other_method, other_method_said
from bfd.tasks.decompose import DecomposeOptions, assemble_results
from bfd.tasks.extract import ExtractConfig
from bfd.tasks.prefect_tasks import decompose_from_forward_task, prepare_run_task, publish_task
from bfd.tasks.stats_only import FORWARD_STAGES, SUMMARY_STAGE


def plan_line(run_id: str, n_images: int, n_parts: int) -> str:
    """What a stats-only run will do, in one line (as ``RunPlan.summary`` says a stored
    run's extraction), naming the stages its progress reports."""
    return (f"run {run_id}: {count(n_images, 'image')}, no activations kept "
            f"(--no-store-activations): two forward passes over them ({FORWARD_STAGES[0]}: "
            f"their means, {FORWARD_STAGES[1]}: their projections), then the summaries of "
            f"{count(n_parts, '(site, layer) pair')} ({SUMMARY_STAGE}); an interrupted run "
            "keeps nothing and is computed again from the start")


def stats_only_run(config: dict[str, Any], root: str, decompose_kw: dict[str, Any],
                   hold: Callable[[str], None] | None = None
                   ) -> tuple[str, dict[str, str], int | None]:
    """Plans the run (request, image manifest, model tensors, the store template's metadata),
    decomposes it from two forwards and publishes it as the ``decompose`` flow publishes a
    stored run, unless it is published complete with these options already, by this bfd's
    method (then only the results' path is returned); ``hold``: called with the run id before
    anything is written (``bfd.tasks.extract.prepare_run``: the caller takes the run's lock
    there).

    Returns:
        The run id, what was written, by name, and the other method its published results
        were of when they were computed again for that (``bfd.core.method``; else None).
    """
    cfg = ExtractConfig(**with_stats_only(ExtractConfig(**config).to_dict()))
    plan = prepare_run_task(root, cfg, hold)
    options = DecomposeOptions(**decompose_kw)
    # the same request published complete with these options (under the run's lock, taken by
    # ``hold``): its results are those two forwards would give again
    if computed_run(Store(root), plan.run_id, options.to_dict()) is not None:
        progress.report("notice", 0, 0, text=f"run {plan.run_id} is already computed (no "
                        "activations kept): its results are reused, nothing is recomputed")
        return plan.run_id, {"results": results_path(Store(root), plan.run_id)}, None
    method = other_method(Store(root), plan.run_id)
    if method is not None:  # an older bfd's results: not reused as this one's, said so
        progress.report("notice", 0, 0, text=other_method_said(plan.run_id, method,
                                                               stats_only=True))
    progress.report("notice", 0, 0, text=plan_line(plan.run_id, plan.n_images,
                                                     len(plan.layers) * len(cfg.sites)))

    def report(stage: str, done: int, total: int) -> None:
        progress.report(stage, done, total, run_id=plan.run_id)

    parts, images = decompose_from_forward_task(root, plan.run_id, cfg, plan.layers,
                                                list(plan.records), options, report=report)
    request = read_request(Store(root), plan.run_id)
    attrs = open_activations(Store(root), plan.run_id).attrs
    results = assemble_results(parts, {**results_attrs(request, attrs), "run_id": plan.run_id,
                                       **options.to_dict(),
                                       "images_per_task": options.images_per_task or 0})
    # the statuses go to the tables only: no shard is marked done, as no chunk was written
    written = publish_task(root, plan.run_id, results, {"decompose": options.to_dict()}, images)
    return plan.run_id, written, method
