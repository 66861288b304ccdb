"""Flow ``compare``: several models or checkpoints audited on the same image set, and the run
ids of every pair, for the named queries ``compare_runs`` and ``head_type_changes``."""

from __future__ import annotations

import itertools
from typing import Any

from prefect import flow, get_run_logger, tags
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field, ValidationError

from bfd.faults import store_faults
from bfd.flows.audit import audit, refresh_outputs
from bfd.flows.params import (
    AuditConfig,
    DecomposeParams,
    DriftThresholds,
    Workers,
    _Params,
    describe_errors,
    with_deployment_defaults,
)
from bfd.flows.prefect_io import artifact_key, bfd_command, md_code, resolve_store
from bfd.storage import Store, read_request
from bfd.tasks.audits import default_series
from bfd.tasks.drift import run_metrics


class CompareItem(_Params):
    """One model to compare: a timm name and where its weights come from."""

    model: str = Field(description="timm model name")
    weights: str = Field("pretrained", description="pretrained, random, or a checkpoint file")
    seed: int = Field(0, description="seed of a random init")
    model_args: dict[str, bool | int | float | str | None] | None = Field(
        None, description="its timm.create_model arguments (default: config's model_args)")
    series: str | None = Field(None, description="its series (default: model@weights)")


def head_type_change_count(store: Store, run_a: str, run_b: str) -> int:
    """Heads, of those both runs hold, whose type differs (``head_type_changes`` lists them)."""
    heads_a, heads_b = run_metrics(store, run_a)[1], run_metrics(store, run_b)[1]
    return sum(heads_a[k]["head_type"] != heads_b[k]["head_type"]
               for k in set(heads_a) & set(heads_b))


def _run_name() -> str:
    from prefect.runtime import flow_run

    items = flow_run.parameters.get("models") or []
    names = [i.get("model") if isinstance(i, dict) else i.model for i in items]
    return "compare " + " vs ".join(map(str, names))


@flow(name="compare", log_prints=True, flow_run_name=_run_name)
def compare(
    models: list[CompareItem],
    config: AuditConfig | None = None,
    store: str | None = None,
    drift: DriftThresholds | None = None,
    decompose_options: DecomposeParams | None = None,
    workers: Workers = 1,
    dask_address: str | None = None,
    dashboard: bool = True,
) -> dict[str, Any]:
    """Audit each model on the same images, then name the run ids of every pair.

    Args:
        models: the models or checkpoints (at least two).
        config: what every model is audited on (images, n_images, layers, ...); its model,
            weights and seed are each item's.
        store: store root; else the Prefect Variable ``bfd_store``, else ``$BFD_STORE``.
        drift: thresholds of each audit's drift flags (against its own series).
        decompose_options: options of the decomposition.
        workers: local extraction workers.
        dask_address: run on this Dask cluster.
        dashboard: rebuild ``<store>/dashboard`` at the end.

    Returns:
        One summary per audit and one row per pair (series and run ids, changed head types).
    """
    logger = get_run_logger()
    if len(models) < 2:
        raise ValueError(f"models: compare needs at least two; given {len(models)}")
    config = with_deployment_defaults("config", config, AuditConfig)
    thresholds = with_deployment_defaults("drift", drift, DriftThresholds)
    options = with_deployment_defaults("decompose_options", decompose_options, DecomposeParams)
    root = resolve_store(store)
    with store_faults(root):  # a full or read-only disk: one line (trial 26 F7)
        audits = []
        for i, item in enumerate(models):
            try:
                one_config = AuditConfig.model_validate(
                    {**config.model_dump(), "model": item.model, "weights": item.weights,
                     "seed": item.seed, "model_args": (item.model_args if item.model_args
                                                       is not None else config.model_args)})
            except ValidationError as err:
                raise ValueError(describe_errors(err, prefix=f"models[{i}].")) from None
            series = (item.series if item.series is not None
                      else default_series(item.model, item.weights, item.seed,
                                          one_config.model_args))
            with tags(f"model:{item.model}", f"series:{series}"):
                audits.append(audit(one_config, root, workers=workers, dask_address=dask_address,
                                    decompose_options=options, series=series, drift=thresholds,
                                    trigger="compare", dashboard=False))
        images = {read_request(Store(root), a["run_id"]).images_sha256 for a in audits}
        if len(images) != 1:
            raise RuntimeError(f"the compared runs saw different image sets ({len(images)}); "
                               "compare runs on one image list")
        pairs = [{"series_a": a["series"], "series_b": b["series"], "run_a": a["run_id"],
                  "run_b": b["run_id"],
                  "n_head_type_changes": head_type_change_count(Store(root), a["run_id"],
                                                                b["run_id"])}
                 for a, b in itertools.combinations(audits, 2)]
        refresh_outputs(root, dashboard)
        key = artifact_key("compare", ",".join(a["series"] for a in audits))
        lines = [f"# Comparison of {len(audits)} models on one image set", "",
                 f"store {md_code(root)}; per pair: " + bfd_command(
                     "query", "compare_runs", "--param", "run_a=RUN_A", "--param", "run_b=RUN_B",
                     "--store", root) + " (per-layer and per-head deltas) and "
                 "`bfd query head_type_changes ...` (the heads whose type differs).", "",
                 "| series a | series b | run a | run b | head types changed |",
                 "|---|---|---|---|---|"]
        lines += [f"| {md_code(p['series_a'], cell=True)} | {md_code(p['series_b'], cell=True)} "
                  f"| `{p['run_a']}` | `{p['run_b']}` | {p['n_head_type_changes']} |"
                  for p in pairs]
        create_markdown_artifact("\n".join(lines) + "\n", key=key,
                                 description="BFD comparison: the run ids of every pair")
        create_table_artifact(pairs, key=key + "-pairs", description="pairs of compared runs")
        for p in pairs:
            logger.info("pair %s / %s: runs %s %s, %d head type(s) changed", p["series_a"],
                        p["series_b"], p["run_a"], p["run_b"], p["n_head_type_changes"])
        return {"audits": audits, "pairs": pairs, "store": root}
