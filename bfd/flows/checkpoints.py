"""Flow ``audit-checkpoints``: follow a model through training. Every checkpoint file of a
folder or glob that its series has not audited yet with the same request (the weights' bytes
and every option that shapes the run) is audited, in step order, each as one audit of the
series. A file that is no readable checkpoint, or does not load or fit the model (each is
loaded before the first audit, as ``bfd audit-checkpoints --dry-run`` loads it), is left out
and named, and the others are audited; the run then ends ``Failed``, naming it. Each audit,
once done, and each file that does not load, once tried, is reported to the progress
listeners (``bfd.flows.progress``, stage ``checkpoint``, detail ``audit`` or ``left_out``):
the command prints its lines then, not when every checkpoint is done."""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger, tags
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Failed, State

from bfd.faults import store_faults
from bfd.flows import progress
from bfd.flows.audit import audit, gate_end, refresh_outputs
from bfd.flows.params import (
    AuditConfig,
    DecomposeParams,
    DriftThresholds,
    KeepActivations,
    Workers,
    decompose_kwargs,
    require_model,
    with_deployment_defaults,
)
from bfd.flows.prefect_io import artifact_key, md_code, resolve_store
from bfd.storage import Store, series_lock, write_left_out
from bfd.tasks.audits import (
    check_place,
    checkpoints_series,
    describe_request,
    fitting_checkpoints,
    left_out_changes,
    pending_checkpoints,
)
from bfd.tasks.drift_gate import drift_verdict
from bfd.tasks.extract import ExtractConfig, check_before_work
from bfd.tasks.options import DecomposeOptions


class CheckpointsLeftOut(ValueError):
    """Raised by a call of ``audit_checkpoints`` that left files out (the others audited):
    ``out`` is what the flow returns otherwise, ``out["bad"]`` one line per file."""

    def __init__(self, message: str, out: dict[str, Any]) -> None:
        super().__init__(message)
        self.out = out

    def __reduce__(self):  # pickled with its result, as Prefect may persist it
        return type(self), (str(self), self.out)


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"checkpoints {params.get('series') or params.get('checkpoints')}"


@flow(name="audit-checkpoints", log_prints=True, flow_run_name=_run_name)
def audit_checkpoints(
    checkpoints: str,
    config: AuditConfig,
    store: str | None = None,
    series: str | None = None,
    drift: DriftThresholds | None = None,
    decompose_options: DecomposeParams | None = None,
    workers: Workers = 1,
    dask_address: str | None = None,
    gpu_resources: bool = False,
    dashboard: bool = True,
    fail_on_drift: bool = False,
    fail_if_not_compared: bool = False,
    keep_activations: KeepActivations = None,
) -> dict[str, Any] | State:
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
        fail_on_drift: the run ends ``Failed`` when any new audit flagged drift
            (``bfd audit-checkpoints --fail-on-drift``), after every audit is recorded.
        fail_if_not_compared: the run ends ``Failed`` when a new audit compared nothing with
            an earlier audit of the series, as ``--fail-if-not-compared``.
        keep_activations: as each new audit is recorded, drop the activations of the series'
            runs other than its K latest (in step order) and the one just audited
            (``bfd.tasks.retention``); results, tables and audits are kept.

    Returns:
        The series, the number of checkpoint files found, one summary per new audit
        (``audits``), what "already audited" compared (``compared``) and one line per file
        left out (``bad``): no readable checkpoint, or one that does not load or does not fit
        the model; ``dashboard``: the dashboard's ``index.html`` when rebuilt (else None).

    Raises:
        CheckpointsLeftOut: Files were left out (the run ends ``Failed``, the others
            audited); its ``out`` is what the flow returns otherwise.
        DriftGateFailed: None left out, and the drift gate failed (``fail_on_drift``,
            ``fail_if_not_compared``; ``bfd.flows.audit.gate_end``): the run ends ``Failed``.
    """
    logger = get_run_logger()
    config = with_deployment_defaults("config", config, AuditConfig)
    thresholds = with_deployment_defaults("drift", drift, DriftThresholds)
    options = with_deployment_defaults("decompose_options", decompose_options, DecomposeParams)
    model = require_model(config)
    root = resolve_store(store)
    with store_faults(root):  # a full or read-only disk: one line (trial 26 F7)
        series = series if series is not None else checkpoints_series(model, checkpoints,
                                                                            config.model_args)
        check_place(series)
        request = config.extract_config()
        # a bad request (layers out of range, no images, ...) is refused before anything is read
        check_before_work(ExtractConfig(**{**request, "weights": "random"}))
        # the series' lock, from deciding what is to audit to the last audit's row: a second run
        # over the folder waits for this one, then finds its checkpoints audited and skips them
        with series_lock(Store(root), series, progress.waiting):
            chosen = DecomposeOptions(**decompose_kwargs(options, config)).to_dict()
            left: list[str] = []  # the path of each line of bad
            copies: list[str] = []  # files of another file's weights: no audit of their own
            todo, n_files, bad = pending_checkpoints(Store(root), checkpoints, series, request,
                                                     chosen, left, copies)
            # each loaded as its audit loads it, before any is audited, as the dry run does: a
            # file that does not load or fit the model is left out of the count to audit (it was
            # counted in "checkpoint k of N to audit", where --dry-run left it out), and named
            # now, before the first audit's lines
            todo = fitting_checkpoints(request, todo, bad, left, _told_left_out)
            compared = describe_request(request, chosen)
            logger.info("series %s: %d checkpoint file(s) in %s, %d to audit (%d already audited "
                        "with the same request); store %s", series, n_files, checkpoints,
                        len(todo), n_files - len(bad) - len(todo), root)
            for line in bad:
                logger.error("left out: %s", line)
            summary = {"series": series, "n_files": n_files, "store": root, "compared": compared,
                       "bad": bad, "left": left, "copies": copies}
            if not todo:
                # "not left out": a file left out may read and not fit the model
                others = " (those not left out)" if bad else ""
                folder, at = md_code(checkpoints), md_code(root)
                message = (f"Nothing to do: no checkpoint file in {folder} yet (store "
                           f"{at})." if not n_files else
                           f"Nothing to do: all {n_files} checkpoint file(s) of {folder} "
                           f"are left out (store {at}).{_left_out(bad)}"
                           if len(bad) == n_files else
                           f"Nothing to do: all {n_files - len(bad)} checkpoint file(s) of "
                           f"{folder}{others} are already audited in series {md_code(series)} "
                           f"with the same request ({compared}; store {at}).{_left_out(bad)}")
                logger.info(message.replace("`", ""))
                wrote = record_left_out(Store(root), series, checkpoints, bad, left, [])
                create_markdown_artifact(message, key=artifact_key("checkpoints", series),
                                         description="audit-checkpoints: nothing to do")
            done: list[dict[str, Any]] = []
            if todo:
                try:
                    _audit_each(todo, done, config, root, series, model, options, thresholds,
                                workers, dask_address, gpu_resources, keep_activations)
                finally:  # kept before the dashboard is built, also when an audit failed
                    record_left_out(Store(root), series, checkpoints, bad, left, done,
                                    [c["path"] for c in todo])
        if not todo:
            if wrote:  # a file left out or cleared: the dashboard says it (after the lock)
                refresh_outputs(root, dashboard)
            return _ended({**summary, "audits": []})
        # each audit's drops, as it ended (_audit_each)
        retention = (None if keep_activations is None
                     else [line for d in done for line in d.get("retention") or []])
        index = refresh_outputs(root, dashboard) if done else None
        lines = [f"# Checkpoints of series {md_code(series)}", "",
                 f"{len(done)} new audit(s) of {n_files} file(s) in {md_code(checkpoints)}; "
                 f"store {md_code(root)}.",
                 "", "| step | checkpoint | run | drift flags |", "|---|---|---|---|"]
        lines += [f"| {d['step']} | {md_code(os.path.basename(d['checkpoint']), cell=True)} | "
                  f"`{d['run_id']}` | {_flags(d)} |" for d in done]
        create_markdown_artifact("\n".join(lines) + "\n" + _left_out(bad),
                                 key=artifact_key("checkpoints", series),
                                 description=f"audit-checkpoints of series {series}")
        out = {**summary, "audits": done, "dashboard": index, "retention": retention}
        n_flagged = sum(d["n_flagged"] or 0 for d in done)
        if out["bad"]:  # Failed, naming the files left out, and the drift gate's failure if any
            gate = drift_verdict(n_flagged, fail_on_drift, done, fail_if_not_compared).message()
            return _ended(out, gate)
        return gate_end(out, n_flagged, done, fail_on_drift, fail_if_not_compared)


def _audit_each(todo, done, config, root, series, model, options, thresholds, workers,
                dask_address, gpu_resources, keep_activations) -> None:
    """Audits each checkpoint of ``todo`` (each loads and fits the model:
    ``fitting_checkpoints``) in step order, appending each audit to ``done``; with
    ``keep_activations``, each audit drops the older runs' activations as it ends, so that a
    backfill of many checkpoints never holds more than K + 1 runs' activations."""
    logger = get_run_logger()
    for k, ckpt in enumerate(todo, 1):
        # said as its audit starts: the extraction's lines that follow are this file's
        start = (f"checkpoint {k} of {len(todo)} to audit: {os.path.basename(ckpt['path'])} "
                 f"(step {ckpt['step']})")
        logger.info(start)
        progress.report("notice", 0, 0, text=start)
        with tags(f"model:{model}", f"series:{series}"):
            one = audit(config.model_copy(update={"weights": ckpt["path"]}), root,
                        workers=workers, dask_address=dask_address,
                        gpu_resources=gpu_resources, decompose_options=options,
                        series=series, step=ckpt["step"], drift=thresholds,
                        trigger="checkpoints", dashboard=False,
                        keep_activations=keep_activations)
        done.append({**one, "checkpoint": ckpt["path"]})
        # said now, not when every checkpoint is done: the command prints its lines
        progress.report("checkpoint", k, len(todo), audit=done[-1])


def _told_left_out(k: int, n: int, line: str) -> None:
    """A checkpoint left out (it does not load or fit the model: ``fitting_checkpoints``)
    told to the progress listeners as found (the command prints it; the run's log names it
    with the others left out)."""
    progress.report("checkpoint", k, n, left_out=line)


def record_left_out(store: Store, series: str, checkpoints: str, bad: list[str],
                    left: list[str], done: list[dict[str, Any]],
                    pending: list[str] | None = None) -> bool:
    """Keeps in the store, under the series' lock, what this invocation changed of the
    series' checkpoints left out (``bfd.tasks.audits.left_out_changes``: each file left out
    now, ``bad`` with its path in ``left``, not left out so already; each file left out before
    that was audited now, ``done``, reads now or is gone: cleared; ``pending``: the
    checkpoints it was to audit), one file
    (``bfd.storage.write_left_out``) naming the folder or glob and the flow run. Returns
    whether it wrote. A failure to write is said in the log, never a failed run: the audits
    are recorded."""
    try:
        rows = left_out_changes(store, series, checkpoints, bad, left,
                                [d["checkpoint"] for d in done], pending or [])
        for row in rows:
            row.update(checkpoints=checkpoints, flow_run_id=flow_run.id)
        return write_left_out(store, series, rows) is not None
    except (OSError, ValueError) as err:
        get_run_logger().warning("the checkpoints left out could not be recorded in the "
                                 "store: %s", err)
        return False


def _flags(audit: dict) -> str:
    """An audit's drift flags in the checkpoints' table: the count, against the audit it was
    compared with where that is not the one before it (``skipped``); ``first`` or ``not
    compared`` when it compared nothing (its 0 is no pass)."""
    if audit["prev_audit_id"] is None:
        return "first"
    if audit.get("drift_note"):
        return "not compared"
    skipped = audit.get("skipped") or []
    return (f"{audit['n_flagged']} (against `{audit['prev_audit_id']}`, {len(skipped)} "
            "not comparable skipped)" if skipped else str(audit["n_flagged"]))


def _left_out(bad: list[str]) -> str:
    return "".join(f"\n- left out: {line}" for line in bad)


def _ended(out: dict[str, Any], gate: str = "") -> dict[str, Any] | State:
    """What the flow returns; a run that left files out ends ``Failed``, its message naming
    them, so that a scheduled run shows it in the Prefect UI (and its notifications) rather
    than as Completed; a call of the flow raises ``CheckpointsLeftOut``, holding ``out``.
    ``gate``: the drift gate's failure (``DriftVerdict.message``), said too; "" if none."""
    if not out["bad"]:
        return out
    # every file named, the first one's reason in full (each one's: the run's log, its
    # artifact, bfd audit-checkpoints --dry-run)
    names = ", ".join(os.path.basename(path) for path in out["left"])
    more = f" (and {len(out['bad']) - 1} more)" if len(out["bad"]) > 1 else ""
    message = (f"{len(out['bad'])} of {out['n_files']} checkpoint file(s) left out "
               f"({names}), {len(out['audits'])} audited: {out['bad'][0]}{more}"
               + (f"; {gate}" if gate else ""))
    return Failed(message=message, data=CheckpointsLeftOut(message, out))
