"""Flow ``audit``: one audit of one model in its series: extract -> decompose -> publish (or
the run reused when already computed), then drift against the series' previous audit, the
audit's row, artifacts and events."""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from bfd.core.model_check_limit import model_check_warning
from bfd.faults import store_faults
from bfd.flows import progress
from bfd.flows.extract import extract
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
from bfd.flows.prefect_io import (
    PrefectProgress,
    audit_trigger,
    current_flow_run_id,
    emit_audit_events,
    name_and_tag,
    publish_artifacts,
    resolve_store,
)
from bfd.flows.runners import decompose_flow, task_runner
from bfd.flows.stats_only import stats_only_run
from bfd.models import resolve_device
from bfd.queries.seen import run_seen
from bfd.storage import Store, results_path, run_lock, table_faults
from bfd.tasks.audits import (
    audit_row,
    check_place,
    check_series,
    computed_run,
    default_series,
    drift_said,
    drift_since_previous,
    options_replaced,
    other_method,
    other_method_said,
    run_reuse,
    time_step,
)
from bfd.tasks.decompose import DecomposeOptions
from bfd.tasks.drift import layer_summary
from bfd.tasks.drift_gate import DriftGateFailed, drift_verdict
from bfd.tasks.extract import ExtractConfig, check_space, refuse_before_work
from bfd.tasks.retention import keep_latest


def _run_name() -> str:
    """The flow run's first name; the flow renames it once the series and step are known."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    config = params.get("config") or {}
    config = config if isinstance(config, dict) else config.model_dump()
    series = params.get("series") or f"{config.get('model') or 'audit'}@{config.get('weights')}"
    step = params.get("step")
    return f"{series} step {step}" if step is not None else f"{series} audit"


class _SaidToo(logging.LoggerAdapter):
    """The flow run's logger, whose warnings are also a ``notice`` to the command that runs
    the flow (its stderr: ``bfd.cli``'s bars), where the run's log shows only with -v."""

    def warning(self, msg, *args, **kwargs) -> None:
        super().warning(msg, *args, **kwargs)
        progress.report("notice", 0, 0, text="warning: " + (msg % args if args else msg))

    def process(self, msg, kwargs):
        return msg, kwargs


def refresh_outputs(store: str, dashboard: bool) -> str | None:
    """The SQL catalog's snapshot, then the dashboard, when ``dashboard``
    (``bfd.report.dashboard.refresh_outputs``), logged to the flow run and a failure said to
    the command too (trial 30: a dashboard left broken by a full disk, without a word);
    returns the dashboard's ``index.html`` when rebuilt, else None."""
    from bfd.report.dashboard import refresh_outputs as refresh

    return refresh(store, _SaidToo(get_run_logger(), {})) if dashboard else None


@flow(name="audit", log_prints=True, flow_run_name=_run_name)
def audit(
    config: AuditConfig,
    store: str | None = None,
    workers: Workers = 1,
    dask_address: str | None = None,
    gpu_resources: bool = False,
    decompose_options: DecomposeParams | None = None,
    series: str | None = None,
    step: int | None = None,
    drift: DriftThresholds | None = None,
    trigger: str | None = None,
    dashboard: bool = True,
    store_activations: bool = True,
    fail_on_drift: bool = False,
    fail_if_not_compared: bool = False,
    keep_activations: KeepActivations = None,
) -> dict[str, Any] | State:
    """One audit of one model: its activations (reused where already stored), its BFD (reused
    when the run is already computed), drift against the previous audit of its series, and
    one new row of the ``audits`` table.

    Args:
        config: what to audit (model, weights, images, layers, ...).
        store: store root; else the Prefect Variable ``bfd_store``, else ``$BFD_STORE``
            (outside a deployment also ``./bfd-store``).
        workers: local extraction workers (processes when > 1).
        dask_address: run extraction shards and decomposition graphs on this Dask cluster.
        gpu_resources: ask the cluster for one ``GPU`` resource per shard task.
        decompose_options: options of the decomposition; its ``device`` is the extraction's
            unless given.
        series: the series this audit extends; by default the model and its weights' source.
        step: the audit's place in its series (a training step); its time when empty.
        drift: thresholds of the drift flags.
        trigger: what asked for the audit (cli, checkpoints, compare, ...); by default
            (and for ``schedule``) the flow run's: ``schedule`` or ``deployment`` (a run by
            hand) for a deployment's run, else ``flow`` (``audit_trigger``).
        dashboard: rebuild ``<store>/dashboard`` at the end.
        store_activations: False: keep no activations; the decomposition's two passes run
            on two forwards over the images (``bfd.flows.stats_only``). The run gets an id of
            its own, and its request (``runs.config_json``) says
            ``"activations": "not stored"``.
        fail_on_drift: the run ends ``Failed`` when drift was flagged (``bfd audit
            --fail-on-drift``), after the audit, its drift, artifacts and events are recorded.
        fail_if_not_compared: the run ends ``Failed`` when the audit compared nothing with an
            earlier audit of its series (the first of it, or none comparable), as
            ``--fail-if-not-compared``.
        keep_activations: after the audit, drop the activations of the series' runs other
            than its K latest (``bfd audit --keep-activations``, ``bfd.tasks.retention``);
            their results, tables and audits are kept.

    Returns:
        The audit id, run id, series, step, drift flag count and the paths written;
        ``reused``: nothing was computed (neither activations nor results), ``repaired``:
        the shards of the run's activations found damaged and extracted again, ``how``: what
        was computed, in words (``bfd.tasks.audits.run_reuse``), ``dashboard``: the
        dashboard's ``index.html`` when rebuilt (else None), ``retention``: the lines of
        ``keep_activations``'s drops (None without it).

    Raises:
        ValueError: A request refused before any work (``refuse_before_work``: a bad option,
            weights that do not fit the model, ...): no audit is recorded. An error of the
            work itself is raised after the audit is recorded as ``failed``.
        NotEnoughSpaceError: The run's activations cannot fit on the store's disk, where
            that is known before the audit is recorded (``check_space``): none is recorded.
        StoreWriteError: A full or read-only disk met writing the store: one line naming
            the store and what to do (``bfd.faults.store_faults``, as the other flows), what
            Prefect and ``bfd serve`` show; the work completed before it is kept.
        DriftGateFailed: The drift gate failed (``fail_on_drift``, ``fail_if_not_compared``:
            ``bfd.tasks.drift_gate``), everything recorded: the run ends ``Failed``, its
            message saying what was flagged or not compared; ``out`` is the return value.
    """
    logger = get_run_logger()
    config = with_deployment_defaults("config", config, AuditConfig)
    options = with_deployment_defaults("decompose_options", decompose_options, DecomposeParams)
    thresholds = with_deployment_defaults("drift", drift, DriftThresholds)
    model = require_model(config)
    root = resolve_store(store)
    with store_faults(root):  # a full or read-only disk: one line (trial 26 F7)
        missing = not os.path.exists(root)  # said at the end when the audit made the store
        series = series if series is not None else default_series(model, config.weights,
                                                                    config.seed, config.model_args)
        check_place(series, step)
        check_series(Store(root), series)  # a damaged audit file: refused, no failed audit added
        # a bad request (layers out of range, weights that do not fit the model, ...) is refused
        # before the audit's row is opened: nothing recorded, no series begun; the weights loaded
        # here are those the extraction uses
        refuse_before_work(ExtractConfig(**config.extract_config()))
        if store_activations:  # activations that cannot fit on the disk: refused here too
            check_space(root, ExtractConfig(**config.extract_config()))
        started = datetime.now(UTC)
        step = step if step is not None else time_step(started)
        name_and_tag(f"{series} step {step}", [f"model:{model}", f"series:{series}"])
        logger.info("audit of series %s, step %d, into store %s", series, step, root)
        # the run's lock (bfd.storage.run_lock), once its id is known, to the end of the report:
        # a run another process computes is waited for, then reused; its results are not
        # republished while read here. Taken inside the series' lock (audit_row), never the
        # other way round (audit-checkpoints holds the series' lock around its audits).
        with contextlib.ExitStack() as computing:
            def hold(run_id: str) -> None:
                waited: list[str] = []

                def wait(line: str) -> None:
                    waited.append(line)
                    progress.waiting(line, run_id)

                computing.enter_context(run_lock(Store(root), run_id, wait))
                if waited:
                    progress.waited(run_id)

            with audit_row(Store(root), series, step, audit_trigger(trigger), current_flow_run_id(),
                           started, writing=progress.recording, waiting=progress.waiting) as row:
                with progress.listening(PrefectProgress()):
                    decompose_kw = decompose_kwargs(options, config)
                    stored = DecomposeOptions(**decompose_kw).to_dict()
                    extracted: list[int] = []  # the shards of activations extracted here
                    n_shards = None  # the run's shards of activations (none kept: stats-only)
                    repaired: list[int] = []  # those of them found damaged
                    faults: list = []  # the run's damaged table files, published again
                    method = None  # the other method its published results were of, if any
                    if not store_activations:  # computed from two forwards, whatever is stored
                        run_id, written, method = stats_only_run(config.extract_config(), root,
                                                                 decompose_kw, hold)
                        run = computed_run(Store(root), run_id, stored) or {}
                    else:
                        runner = task_runner(workers, dask_address,
                                             resolve_device(config.extract_config()["device"]))
                        done = extract.with_options(task_runner=runner)(
                            config.extract_config(), root, gpu_resources)
                        run_id, extracted = done["run_id"], done["extracted"]
                        repaired, n_shards = done["repaired"], done["n_shards"]
                        hold(run_id)  # then whether it is computed: one process decomposes it
                        faults = table_faults(Store(root), run_id)  # then not computed: republished
                        for fault in faults:
                            # a table file of an older bfd (lacking columns added since) is no
                            # damage: said as what it is, in one line
                            said = (f"published again: {fault}" if fault.older
                                    else f"damaged, published again: {fault}")
                            logger.warning("%s", said)
                            progress.report("notice", 0, 0, text=said)
                        # each table file is read once here: the faults just found are passed on
                        run = computed_run(Store(root), run_id, stored, faults=faults)
                        if run is None:
                            # a run published with other options (decompose --prefix include since
                            # its audit) is decomposed again with the audit's: said, not done
                            # quietly
                            replaced = options_replaced(Store(root), run_id, stored)
                            if replaced:
                                logger.warning("%s", replaced)
                                progress.report("notice", 0, 0, text=replaced)
                            # so is one whose results an older bfd published (bfd.core.method):
                            # not reused as this bfd's
                            method = other_method(Store(root), run_id)
                            if method is not None:
                                line = other_method_said(run_id, method, extracted)
                                logger.warning("%s", line)
                                progress.report("notice", 0, 0, text=line)
                            written = decompose_flow(dask_address)(
                                run_id, root, dask_address=dask_address, **decompose_kw)
                            run = computed_run(Store(root), run_id, stored) or {}
                        else:
                            written = {"results": results_path(Store(root), run_id)}
                rows = drift_since_previous(Store(root), row, run_id, thresholds.model_dump(),
                                            run_seen(root, run_id))
            # reused: nothing recomputed, neither its activations (a damaged shard is extracted
            # again before the results are reused) nor its results
            reused = "runs" not in written and not extracted
            how = run_reuse(extracted, repaired, decomposed="runs" in written,
                            republished=bool(faults), n_shards=n_shards,
                            older=bool(faults) and all(f.older for f in faults),
                            method=method)
            logger.info("audit %s: run %s %s, %d drift flag(s); store %s", row["audit_id"], run_id,
                        how, row["n_flagged"], root)
            if row["drift_note"] or row["skipped"]:
                logger.info("drift: %s", drift_said(row))
            profile = layer_summary(Store(root), run_id)
            # the check against the model (docs/checks.md), reused run or not: in the flow run's
            # log and at the top of the audit's report
            check = model_check_warning(run_id, [{"site": "attn_in", **r} for r in profile])
            if check:
                logger.warning("%s", check)
            report = {**row, "reused": reused, "repaired": repaired, "how": how,
                      "model_check": check}
            publish_artifacts(report, run, profile, rows, root)
        emit_audit_events(row, rows, root)
        if missing:  # a moved store or a mistyped path of a deployment: a new history begins
            # there, its first audit comparing nothing (trial 26; the CLI says it too)
            logger.warning("no store was at %r: a new one was made there; this audit is the "
                           "first of its series there and compares nothing", root)
        retention = keep_latest(Store(root), series, keep_activations, run_id, logger.info)
        index = refresh_outputs(root, dashboard)
        out = {**{k: row[k] for k in ("audit_id", "series", "run_id", "step", "prev_audit_id",
                                      "n_flagged", "drift_note", "prev_step", "skipped")},
               "reused": reused, "repaired": repaired, "how": how, "store": root,
               "dashboard": index, "retention": retention, **written}
        return gate_end(out, row["n_flagged"], [out], fail_on_drift, fail_if_not_compared)


def gate_end(out: dict[str, Any], n_flagged: int, audits: list[dict[str, Any]],
             fail_on_drift: bool, fail_if_not_compared: bool) -> dict[str, Any] | State:
    """``out``, or, when the drift gate of ``audits`` fails (``bfd.tasks.drift_gate``, the
    rule of ``bfd audit --fail-on-drift``), a ``Failed`` state whose one-line message says
    what was flagged or not compared: a scheduled run shows it in the Prefect UI and its
    automations, not Completed; a call of the flow raises ``DriftGateFailed``."""
    logger = get_run_logger()
    verdict = drift_verdict(n_flagged, fail_on_drift, audits, fail_if_not_compared)
    for line in verdict.warnings:
        logger.warning(line)
    if not verdict.failures:
        return out
    message = verdict.message()
    logger.error(message)
    return Failed(message=message, data=DriftGateFailed(message, out))
