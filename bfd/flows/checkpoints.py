"""Flow ``audit-checkpoints``: follow a model through training. Every checkpoint file of a
folder or glob that its series has not audited yet (by content hash) is audited, in step
order, each as one audit of the series."""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger, tags
from prefect.artifacts import create_markdown_artifact

from bfd.files import check_checkpoint, sha256_file
from bfd.flows.audit import audit, refresh_outputs
from bfd.flows.params import (
    AuditConfig,
    DecomposeParams,
    DriftThresholds,
    require_model,
    with_deployment_defaults,
)
from bfd.flows.prefect_io import artifact_key, resolve_store
from bfd.storage import Store
from bfd.tasks.audits import (
    audited_weights,
    check_place,
    checkpoint_files,
    checkpoints_series,
    step_from_name,
)


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"checkpoints {params.get('series') or params.get('checkpoints')}"


def pending_checkpoints(store: Store, pattern: str, series: str) -> tuple[list[dict], int]:
    """The checkpoints still to audit, in step order (each file once, by content), and the
    number of checkpoint files found.

    Raises:
        ValueError: A checkpoint to audit is no readable checkpoint (``check_checkpoint``):
            refused before any audit of the series is recorded.
    """
    files = checkpoint_files(pattern)
    seen = audited_weights(store, series)
    todo = []
    for path in files:
        sha = sha256_file(path)  # the checkpoint's audit reuses this digest
        if sha in seen:
            continue
        seen.add(sha)
        check_checkpoint(path)
        step = step_from_name(path)
        todo.append({"path": str(path), "sha256": sha,
                     "step": step if step is not None else int(os.stat(path).st_mtime)})
    return sorted(todo, key=lambda c: c["step"]), len(files)


@flow(name="audit-checkpoints", log_prints=True, flow_run_name=_run_name)
def audit_checkpoints(
    checkpoints: str,
    config: AuditConfig,
    store: str | None = None,
    series: str | None = None,
    drift: DriftThresholds | None = None,
    decompose_options: DecomposeParams | None = None,
    workers: int = 1,
    dask_address: str | None = None,
    gpu_resources: bool = False,
    dashboard: bool = True,
) -> dict[str, Any]:
    """Audit the checkpoints of a folder or glob that the series has not audited yet.

    Args:
        checkpoints: a folder of ``.safetensors``/``.pth``/``.pt``/``.bin`` files (state dicts,
            also inside ``{"model": ...}`` or ``{"state_dict": ...}``) or a glob.
        config: what to audit them on (model, images, layers, ...); ``weights`` is each file.
        store: store root; else the Prefect Variable ``bfd_store``, else ``$BFD_STORE``.
        series: the series; by default the model and the folder or glob.
        drift: thresholds of the drift flags.
        decompose_options: options of the decomposition.
        workers: local extraction workers.
        dask_address: run on this Dask cluster.
        gpu_resources: ask the cluster for one ``GPU`` resource per shard task.
        dashboard: rebuild ``<store>/dashboard`` at the end when anything was audited.

    Returns:
        The series, the number of checkpoint files found and one summary per new audit.
    """
    logger = get_run_logger()
    config = with_deployment_defaults("config", config, AuditConfig)
    thresholds = with_deployment_defaults("drift", drift, DriftThresholds)
    options = with_deployment_defaults("decompose_options", decompose_options, DecomposeParams)
    model = require_model(config)
    root = resolve_store(store)
    series = series or checkpoints_series(model, checkpoints)
    check_place(series)
    todo, n_files = pending_checkpoints(Store(root), checkpoints, series)
    logger.info("series %s: %d checkpoint file(s) in %s, %d to audit; store %s", series,
                n_files, checkpoints, len(todo), root)
    if not todo:
        message = (f"Nothing to do: all {n_files} checkpoint file(s) of `{checkpoints}` are "
                   f"already audited in series `{series}` (store `{root}`)." if n_files else
                   f"Nothing to do: no checkpoint file in `{checkpoints}` yet (store `{root}`).")
        logger.info(message.replace("`", ""))
        create_markdown_artifact(message, key=artifact_key("checkpoints", series),
                                 description="audit-checkpoints: nothing to do")
        return {"series": series, "n_files": n_files, "audits": [], "store": root}
    done = []
    for ckpt in todo:
        with tags(f"model:{model}", f"series:{series}"):
            one = audit(config.model_copy(update={"weights": ckpt["path"]}), root,
                        workers=workers, dask_address=dask_address,
                        gpu_resources=gpu_resources, decompose_options=options,
                        series=series, step=ckpt["step"], drift=thresholds,
                        trigger="checkpoints", dashboard=False)
        done.append({**one, "checkpoint": ckpt["path"]})
    refresh_outputs(root, dashboard)
    lines = [f"# Checkpoints of series `{series}`", "",
             f"{len(done)} new audit(s) of {n_files} file(s) in `{checkpoints}`; store `{root}`.",
             "", "| step | checkpoint | run | drift flags |", "|---|---|---|---|"]
    lines += [f"| {d['step']} | `{os.path.basename(d['checkpoint'])}` | `{d['run_id']}` | "
              f"{d['n_flagged'] if d['prev_audit_id'] else 'first'} |" for d in done]
    create_markdown_artifact("\n".join(lines) + "\n", key=artifact_key("checkpoints", series),
                             description=f"audit-checkpoints of series {series}")
    return {"series": series, "n_files": n_files, "audits": done, "store": root}
