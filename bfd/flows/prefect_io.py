"""What an audit tells Prefect: the store it writes to, its run's name and tags, its
artifacts, its events, and the progress of its long stages."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import time
from collections.abc import Sequence
from typing import Any, Final

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event

from bfd.flows import progress
from bfd.storage import Store
from bfd.storage.paths import DEFAULT_ROOT, STORE_ENV
from bfd.tasks.audits import skipped_said

STORE_VARIABLE: Final[str] = "bfd_store"
DRIFT_EVENT: Final[str] = "bfd.drift.detected"
AUDIT_EVENT: Final[str] = "bfd.audit.completed"
_MAX_ROWS: Final[int] = 40


def resolve_store(store: str | None) -> str:
    """The store root: the ``store`` parameter, else the Prefect Variable ``bfd_store``, else
    ``$BFD_STORE`` of the process; a run outside a deployment (the CLI, a notebook) falls back
    to ``./bfd-store``, a deployment run never does (the worker's working directory is a
    checkout, not a place for results).

    Raises:
        ValueError: A deployment run with no store from any of these.
    """
    from prefect.runtime import deployment

    if store:
        return str(Store(store).root)
    if deployment.id:
        root, _ = deployment_store(None)
        if root is None:
            raise ValueError(
                f"no store for this deployment run: pass the 'store' parameter, set the Prefect "
                f"Variable {STORE_VARIABLE} (prefect variable set {STORE_VARIABLE} /data/bfd) "
                f"or {STORE_ENV} in the worker's environment")
        return root
    return str(Store(os.environ.get(STORE_ENV) or DEFAULT_ROOT).root)


def deployment_store(store: str | None) -> tuple[str | None, str]:
    """The store of a deployment run given the ``store`` parameter ``store`` (``resolve_store``
    in a run of a deployment; ``bfd serve`` says it): its root and what named it, or (None,
    "") when nothing does (the run fails)."""
    from prefect.variables import Variable

    if store:
        return str(Store(store).root), "the store parameter"
    found = Variable.get(STORE_VARIABLE, default=None)
    if found:
        return str(Store(found).root), f"the Prefect Variable {STORE_VARIABLE}"
    found = os.environ.get(STORE_ENV)
    if found:
        return str(Store(found).root), f"${STORE_ENV}"
    return None, ""


def artifact_key(kind: str, series: str) -> str:
    """An artifact key (lowercase letters, digits, dashes) per kind and series; the series'
    hash keeps two series that slug alike apart."""
    slug = re.sub(r"[^a-z0-9]+", "-", series.lower()).strip("-")[:40].strip("-")
    return f"{kind}-{slug}-{hashlib.sha256(series.encode()).hexdigest()[:8]}"


def name_and_tag(name: str, tags: Sequence[str]) -> None:
    """Renames the current flow run and adds tags (Prefect knows the series and step only
    once the flow has resolved them)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
        client.update_flow_run(flow_run.id, name=name,
                               tags=sorted(set(run.tags or []) | set(tags)))


def current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


def audit_trigger(trigger: str | None) -> str:
    """What asked for an audit (the ``audits`` table's ``trigger``): the ``trigger``
    parameter where it names a caller (cli, checkpoints, compare); in a run of a deployment,
    ``schedule`` when one of its schedules created the run and ``deployment`` when a person
    did (``prefect deployment run``, the UI's Run), whatever ``schedule`` the deployment's
    parameters say (prefect.yaml's nightly audit gives it; a run by hand was recorded as
    scheduled); else ``flow``."""
    from prefect.context import FlowRunContext

    if trigger not in (None, "schedule"):
        return trigger
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    return deployment_trigger(getattr(run, "deployment_id", None),
                              getattr(run, "auto_scheduled", False), trigger)


def deployment_trigger(deployment_id: Any, auto_scheduled: bool, trigger: str | None) -> str:
    """``audit_trigger`` of a flow run of ``deployment_id`` (None: not a deployment's run)."""
    if deployment_id is None:
        return trigger or "flow"
    return "schedule" if auto_scheduled else "deployment"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def md_code(value: object, cell: bool = False) -> str:
    """``value`` as a Markdown code span that shows it as typed, whatever it holds: fenced by
    one more backtick than its longest run of them (a single backtick in a series ended the
    span, and the rest of the name was read as Markdown, links included: trial 31), a space
    inside the fence where it starts or ends with one; in a table's ``cell``, its pipes
    escaped (GitHub's tables split on them even inside a span)."""
    text = str(value)
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    span = f"{fence}{pad}{text}{pad}{fence}"
    return span.replace("|", "\\|") if cell else span


def bfd_command(*argv: object) -> str:
    """A ``bfd`` command line as a code span a shell runs as shown: each argument quoted
    where it needs it (a series with a space or a quote)."""
    return md_code(shlex.join(["bfd", *map(str, argv)]))


def _md_table(rows: list[dict], columns: Sequence[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |\n"
                          for r in rows)


def audit_markdown(audit: dict, run: dict, profile: list[dict], drift: list[dict],
                   store: str) -> str:
    """The audit's report: what was audited, the per-layer summary, drift vs the audit it was
    compared with (the previous comparable one; flagged rows first) and where the results
    are."""
    flagged = [r for r in drift if r["flagged"]]
    how = audit["how"]  # what was computed, in words (bfd.tasks.audits.run_reuse)
    lines = [
        f"# BFD audit of {md_code(run.get('model'))}",
        "",
        f"- series: {md_code(audit['series'])}, step {audit['step']}",
        f"- weights: {md_code(run.get('weights'))} (sha256 "
        f"`{str(run.get('weights_sha256'))[:16]}`)",
        f"- images: {md_code(run.get('images'))}, {run.get('n_images')} images",
        f"- run: `{audit['run_id']}` ({how})",
        f"- audit: `{audit['audit_id']}`, compared with: `{audit['prev_audit_id'] or 'none'}`",
        *([f"- **{audit['model_check']}**"] if audit.get("model_check") else []),
        "",
        "## Per-layer summary",
        "",
        _md_table(profile, [c for c in ("layer", "frac_pos", "frac_pos_resid", "f_pp", "f_pc",
                                        "f_cp", "f_cc", "n_heads_pp", "n_heads_cp",
                                        "n_heads_cc", "model_logit_residual")
                            if profile and c in profile[0]]),
        "## Drift since the previous comparable audit",
        "",
    ]
    if audit["prev_audit_id"] is None:
        lines.append("First audit of this series: nothing to compare with.")
    elif audit.get("drift_note"):
        lines.append(f"Against audit `{audit['prev_audit_id']}`: {audit['drift_note']}.")
    else:
        lines.append(f"**{len(flagged)} flagged** of {len(drift)} compared values "
                     f"(reference: audit `{audit['prev_audit_id']}`).")
        if audit.get("skipped"):  # the later audits of the series, not comparable
            lines.append(f"It is the latest comparable audit: {skipped_said(audit['skipped'])}.")
        ordered = sorted(drift, key=lambda r: (not r["flagged"], -abs(r["delta"] or 0)))
        lines += ["", _md_table(ordered[:_MAX_ROWS], ["flagged", "layer", "head", "metric",
                                                      "before", "after", "delta",
                                                      "threshold"])]
        if len(ordered) > _MAX_ROWS:
            lines.append(f"... {len(ordered) - _MAX_ROWS} more: " + bfd_command(
                "query", "drift", "--param", f"series={audit['series']}", "--store", store))
    lines += [
        "", "## Where the results are", "",
        f"- store: {md_code(store)} (tables: {md_code(f'{store}/tables')}, dashboard: "
        f"{md_code(f'{store}/dashboard')})",
        "- " + bfd_command("query", "layer_profile", "--param", f"run_id={audit['run_id']}",
                           "--store", store),
        "- " + bfd_command("query", "audit_history", "--param", f"series={audit['series']}",
                           "--store", store),
    ]
    return "\n".join(lines) + "\n"


def publish_artifacts(audit: dict, run: dict, profile: list[dict], drift: list[dict],
                      store: str) -> None:
    series = audit["series"]
    create_markdown_artifact(audit_markdown(audit, run, profile, drift, store),
                             key=artifact_key("audit", series),
                             description=f"BFD audit of series {series}, step {audit['step']}")
    create_table_artifact(profile, key=artifact_key("layers", series),
                          description=f"per-layer BFD summary, run {audit['run_id']}")


def emit_audit_events(audit: dict, drift: list[dict], store: str) -> None:
    """``bfd.audit.completed`` for every audit, and ``bfd.drift.detected`` when something
    is flagged; the resource is the series, so an Automation can match one series."""
    resource = {"prefect.resource.id": f"bfd.series.{audit['series']}",
                "prefect.resource.name": audit["series"]}
    payload = {k: audit[k] for k in ("audit_id", "series", "run_id", "step", "prev_audit_id",
                                     "n_flagged")}
    payload["store"] = store
    emit_event(AUDIT_EVENT, resource=resource, payload=payload)
    flagged = [r for r in drift if r["flagged"]]
    if flagged:
        emit_event(DRIFT_EVENT, resource=resource,
                   payload={**payload, "flagged": flagged[:_MAX_ROWS]})
        get_run_logger().warning("drift: %d value(s) flagged in series %s (audit %s)",
                                 len(flagged), audit["series"], audit["audit_id"])


class PrefectProgress:
    """A ``bfd.flows.progress`` listener that shows each stage as a Prefect progress
    artifact of the current flow run.

    Each update is a call to the API, made by the flow's thread while its tasks wait to be
    collected: a stage's artifact is updated at most once every ``min_interval_s`` seconds,
    and always when the stage completes, so it ends at the same value as before. (Updated on
    every report, the 24 (site, layer) tasks of a 12-block ViT made 24 calls, 0.5-0.9 s of
    an audit of 2 images on 2 busy cores.)
    """

    def __init__(self, min_interval_s: float = 1.0) -> None:
        self.ids: dict[str, Any] = {}
        self.min_interval_s = min_interval_s
        self.updated: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int, detail: dict) -> None:
        if stage in progress.EVENTS:  # not work: no progress to show
            return
        pct = 100.0 * done / total if total else 100.0
        now = time.monotonic()
        if (stage in self.ids and pct < 100.0
                and now - self.updated[stage] < self.min_interval_s):
            return
        self.updated[stage] = now
        try:
            if stage not in self.ids:
                self.ids[stage] = create_progress_artifact(pct, description=f"{stage} progress")
            else:
                update_progress_artifact(self.ids[stage], pct)
        except Exception as err:  # noqa: BLE001 - progress display must never fail a stage
            get_run_logger().debug("progress artifact not updated: %s", err)
