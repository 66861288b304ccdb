"""Flow ``audit-checkpoints``: follow a model through training. Every checkpoint file of a
folder or glob that its series has not audited yet with the same request (the weights' bytes
and every option that shapes the run) is audited, in step order, each as one audit of the
series; a file that is no readable checkpoint is left out and named."""

from __future__ import annotations

import os
from collections.abc import Mapping
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
    audited_requests,
    check_place,
    checkpoint_files,
    checkpoints_series,
    describe_request,
    step_from_name,
)
from bfd.tasks.request_key import key_inputs, key_listing, request_identity


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"checkpoints {params.get('series') or params.get('checkpoints')}"


def pending_checkpoints(store: Store, pattern: str, series: str,
                        config: Mapping[str, Any]) -> tuple[list[dict], int, list[str]]:
    """The checkpoints still to audit with the request ``config`` (fields of
    ``ExtractConfig``; its weights are each file), in step order, the number of checkpoint
    files found, and one line per file that is no readable checkpoint (``check_checkpoint``),
    left out.

    A file is audited already when a complete audit of the series had the same request
    (``audited_requests``: model, weights bytes, images, N, layers, sites, img_size, dtype,
    ...); each request is audited once, so a copy of a checkpoint is not audited twice.
    """
    files = checkpoint_files(pattern)
    seen = audited_requests(store, series)
    records = key_listing(config)
    todo, bad = [], []
    for path in files:
        try:
            check_checkpoint(path)
        except (OSError, ValueError) as err:
            bad.append(" ".join(str(err).split()))
            continue
        sha = sha256_file(path)  # the checkpoint's audit reuses this digest
        inputs = (key_inputs({**config, "weights": str(path)}, sha, records)
                  if records is not None else None)
        identity = request_identity(inputs) if inputs else None
        if identity is not None and identity in seen:
            continue
        if identity is not None:
            seen.add(identity)
        step = step_from_name(path)
        todo.append({"path": str(path), "sha256": sha,
                     "step": step if step is not None else int(os.stat(path).st_mtime)})
    return sorted(todo, key=lambda c: c["step"]), len(files), bad


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
        The series, the number of checkpoint files found, one summary per new audit
        (``audits``), what "already audited" compared (``compared``) and one line per file
        left out as no readable checkpoint (``bad``).
    """
    logger = get_run_logger()
    config = with_deployment_defaults("config", config, AuditConfig)
    thresholds = with_deployment_defaults("drift", drift, DriftThresholds)
    options = with_deployment_defaults("decompose_options", decompose_options, DecomposeParams)
    model = require_model(config)
    root = resolve_store(store)
    series = series or checkpoints_series(model, checkpoints)
    check_place(series)
    request = config.extract_config()
    todo, n_files, bad = pending_checkpoints(Store(root), checkpoints, series, request)
    compared = describe_request(request)
    logger.info("series %s: %d checkpoint file(s) in %s, %d to audit; store %s", series,
                n_files, checkpoints, len(todo), root)
    for line in bad:
        logger.error("left out: %s", line)
    left_out = "".join(f"\n- left out: {line}" for line in bad)
    summary = {"series": series, "n_files": n_files, "store": root, "compared": compared,
               "bad": bad}
    if not todo:
        readable = " (the readable ones)" if bad else ""
        message = (f"Nothing to do: all {n_files - len(bad)} checkpoint file(s) of "
                   f"`{checkpoints}`{readable} are already audited in series `{series}` with "
                   f"the same request ({compared}; store `{root}`).{left_out}" if n_files else
                   f"Nothing to do: no checkpoint file in `{checkpoints}` yet (store `{root}`).")
        logger.info(message.replace("`", ""))
        create_markdown_artifact(message, key=artifact_key("checkpoints", series),
                                 description="audit-checkpoints: nothing to do")
        return {**summary, "audits": []}
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
    create_markdown_artifact("\n".join(lines) + "\n" + left_out,
                             key=artifact_key("checkpoints", series),
                             description=f"audit-checkpoints of series {series}")
    return {**summary, "audits": done}
