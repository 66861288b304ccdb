"""``bfd audit`` of an already computed run, ``bfd extract`` of an already extracted one, and
``bfd audit-checkpoints`` of a folder already audited, without torch, timm or Prefect.

An audit whose run is already computed does no work but its record: the audit's row, its
drift against the series' previous audit, the catalog and the dashboard. The flow ``audit``
does that after importing torch, timm and Prefect, starting Prefect's temporary server and
planning the run again (loading the model to hash its weights), about 10 s before any of it.

Here the command finds the run from its request key instead (``bfd.tasks.request_key``: the
options as given, the installed bfd, timm and torch, the sha256 of the weights file and of
every image), checks the run that key names (its stored request agrees with everything the
key knows, it is published complete with the same decomposition options, by the installed
bfd's method (``bfd.core.method``: an older bfd's results are computed again, by the flow),
every shard of its activations is intact, or for ``--no-store-activations`` the run is a
stats-only one: it has none), and records the audit through the same functions as the flow
(``bfd.tasks.audits.audit_row`` and ``drift_since_previous``,
``bfd.report.dashboard.refresh_outputs``): the same ``audits`` and ``drift`` rows, but
``flow_run_id`` NULL. What is not made is what only Prefect holds: the flow run, its logs,
artifacts and events.

``bfd extract`` of a request whose activations are all stored intact (the same key, agreeing
request, every shard marked and its chunk files there) has nothing to do: it says so at once,
without the flow ``extract``'s run, which would find the same.

``bfd audit-checkpoints`` of a folder whose every checkpoint not left out its series has audited
with the same request has nothing to do either: the command lists the files, hashes them and
compares their request identities with the series' audits by the flow's own function
(``bfd.tasks.audits.pending_checkpoints``), and says so at once, with the flow's line and exit
status (2 when files were left out), recording nothing, as the flow records nothing in the
store then (it runs when the files left out differ from those the store holds left out: it
records them, ``bfd.storage.left_out``). What is not made is the flow run
``audit-checkpoints`` and its markdown artifact ("Nothing to do: ..."). When anything is to
audit, the flow runs as before.

The flow runs instead whenever anything is not certain: a Prefect API is configured (its
runs, artifacts and events are what its user keeps), ``-v`` (Prefect's logs asked for),
``--weights pretrained`` (which file timm loads is only known by loading it), a device other
than auto or cpu, workers, a Dask cluster, or any check above that fails.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from typing import Any


def _needs_flow(args: argparse.Namespace, config) -> bool:
    """Whether this request must run the flow whatever the store holds (module docstring)."""
    from bfd.flows.server import prefect_api_configured

    return (args.verbose or args.workers != 1
            or bool(args.dask_address) or args.gpu_resources
            or config.device not in ("auto", "cpu") or config.weights == "pretrained"
            or prefect_api_configured())


def _request_agrees(store, run_id: str, inputs: dict[str, Any]) -> bool:
    """Whether the stored request of ``run_id`` holds what the key's ``inputs`` say."""
    from bfd.files import same_input
    from bfd.images import SAMPLES
    from bfd.storage import read_request

    try:
        request = read_request(store, run_id)
    except (OSError, ValueError):
        return False
    # as prepare_run writes it: the model arguments only when given
    extra = {"autocast": inputs["autocast"], "seed": inputs["seed"],
             **({"model_args": inputs["model_args"]} if inputs.get("model_args") else {}),
             **inputs["extra"]}
    # the key of the embedded samples is their versions, not their pixels' hash
    images = inputs["images"] == SAMPLES or request.images_sha256 == inputs["images_sha256"]
    # a run made before paths had one spelling holds them as typed (bfd.files.same_input)
    paths = (same_input(request.weights, inputs["weights"])
             and same_input(request.images, inputs["images"]))
    return images and paths and (request.model, request.weights_sha256, request.n_images,
                                 list(request.sites), request.dtype, request.code_version,
                                 dict(request.extra)) == (
        inputs["model"], inputs["weights_sha256"], inputs["n_listed"], inputs["sites"],
        inputs["dtype"], inputs["bfd_version"], extra)


def _shards_intact(store, run_id: str, n_images: int, config) -> bool:
    """Whether every shard of the run's activations is marked done and its chunk files are
    there (what the flow's planner checks before it trusts a shard)."""
    from bfd.storage import plan_shards, trusted_shards

    per_shard = config.images_per_shard or config.images_per_chunk
    try:
        plan = plan_shards(n_images, config.images_per_chunk, per_shard)
        trusted, faults = trusted_shards(store, run_id, plan)
    except (OSError, ValueError):
        return False
    return not faults and trusted == {s.index for s in plan}


def _stored_run_of(args: argparse.Namespace, config, store: str,
                   any_path: bool = False) -> tuple[Any, str] | None:
    """The store and the run that this request's key names, when the key is known, the run's
    stored request agrees with it and all its activations are stored intact (a stats-only
    request, ``--no-store-activations``: its run has none); with ``any_path``, also for a
    request that runs the flow (``_needs_flow``): which run it would find."""
    from bfd.storage import Store, has_request_keys, read_request_key, with_stats_only
    from bfd.tasks.request_key import key_of_config

    s = Store(store)
    # a new store holds no run: the weights and images are not hashed twice for its audit
    if (_needs_flow(args, config) and not any_path) or not has_request_keys(s):
        return None
    extract = config.extract_config()
    # a stats-only request is planned with its extra marked (bfd.flows.stats_only): its key
    stats_only = not getattr(args, "store_activations", True)
    if stats_only:
        extract = with_stats_only(extract)
    try:
        found = key_of_config(extract)
    except (OSError, ValueError):  # the flow reports it in its own words
        return None
    if found is None:
        return None
    key, inputs = found
    run_id = read_request_key(s, key)
    if run_id is None or not _request_agrees(s, run_id, inputs):
        return None
    # a stats-only run has no activations to check: its results are checked by the caller
    intact = stats_only or _shards_intact(s, run_id, inputs["n_listed"], config)
    return (s, run_id) if intact else None


def extracted_run_of(args: argparse.Namespace, config, store: str) -> str | None:
    """The run this extract request resolves to when every shard of it is already stored
    intact (``bfd extract`` has nothing to do); else None."""
    found = _stored_run_of(args, config, store)
    return found[1] if found else None


def _chosen_options(args: argparse.Namespace, config) -> dict[str, Any]:
    """The decompose options of this command (``bfd.cli.decompose_options``, the rest as the
    flows choose them: ``decompose_kwargs``), as ``DecomposeOptions.to_dict`` gives them."""
    from bfd.cli import decompose_options
    from bfd.flows.params import DecomposeParams, decompose_kwargs
    from bfd.tasks.options import DecomposeOptions

    given = DecomposeParams(**decompose_options(args))
    return DecomposeOptions(**decompose_kwargs(given, config)).to_dict()


def computed_run_of(args: argparse.Namespace, config, store: str,
                    any_path: bool = False) -> str | None:
    """The run this audit request resolves to when it is already computed, published with the
    decomposition options given (``--prefix``, ``--control-seed``, ...: ``bfd.cli``'s
    ``decompose_options``), and the audit can be recorded without the flow (with
    ``any_path``: by the flow too, ``bfd audit --dry-run``); else None."""
    found = _stored_run_of(args, config, store, any_path)
    if found is None:
        return None
    s, run_id = found
    # only now (xarray, Zarr): a request the flow runs starts its Prefect server sooner
    from bfd.tasks.audits import computed_run

    options = _chosen_options(args, config)
    return run_id if computed_run(s, run_id, options) is not None else None


def nothing_to_audit(args: argparse.Namespace, config, store: str,
                     series: str) -> dict | None:
    """What the flow ``audit-checkpoints`` returns for this command when it would find
    nothing to audit (``audits`` empty, ``bad``: the files left out), found without it; None
    when the flow must run (``_needs_flow``), a checkpoint is to audit, or the files left out
    are not those the store holds left out (a file newly left out, or one left out before
    that reads now or is gone: the flow records it, ``left_out_changes``, and rebuilds the
    dashboard)."""
    if _needs_flow(args, config):
        return None
    plan = checkpoints_plan(args, config, store, series)
    if plan is None or plan["todo"]:
        return None
    from bfd.storage import Store
    from bfd.tasks.audits import left_out_changes

    if left_out_changes(Store(store), series, args.checkpoints, plan["bad"], plan["left"]):
        return None
    return {k: v for k, v in plan.items() if k not in ("todo", "left")} | {"audits": []}


def checkpoints_plan(args: argparse.Namespace, config, store: str, series: str) -> dict | None:
    """What the flow ``audit-checkpoints`` would find for this command, found without it:
    ``todo``, the checkpoints to audit in step order (``path``, ``sha256``, ``step``:
    ``bfd.tasks.audits.pending_checkpoints``), the number of files, the files left out
    (``bad``, their paths as listed in ``left``), those of another file's weights
    (``copies``) and the request compared (``compared``); None
    when the files cannot be listed (the flow says why in its own words)."""
    from bfd.flows.params import AuditConfig
    from bfd.storage import Store
    from bfd.tasks.audits import describe_request, pending_checkpoints

    # the request as the flow types it from the command's config: the weights are each file
    request = AuditConfig(**config.model_dump(exclude={"weights"})).extract_config()
    chosen = _chosen_options(args, config)
    left: list[str] = []
    copies: list[str] = []
    try:
        todo, n_files, bad = pending_checkpoints(Store(store), args.checkpoints, series,
                                                 request, chosen, left, copies)
    except (OSError, ValueError):
        return None
    return {"series": series, "n_files": n_files, "store": store,
            "compared": describe_request(request, chosen), "bad": bad, "todo": todo,
            "left": left, "request": request, "copies": copies}


def record_reused_audit(args: argparse.Namespace, config, store: str, thresholds,
                        run_id: str, started: datetime) -> dict:
    """The audit of ``run_id``, already computed (``computed_run_of``), recorded without
    Prefect; ``started``: when the command began (its checks are part of the audit). Returns
    what the flow ``audit`` returns.

    Raises:
        RunChanged: The run is no longer computed with the audit's options once the audit
            holds its lock (``bfd.tasks.audits``): nothing was recorded.
    """
    from bfd.cli_interrupt import recording
    from bfd.queries.seen import run_seen
    from bfd.report.dashboard import refresh_outputs
    from bfd.storage import Store, results_path, run_lock
    from bfd.tasks.audits import (
        RunChanged,
        audit_row,
        computed_run,
        default_series,
        drift_since_previous,
        run_reuse,
        say_waiting,
        time_step,
    )
    from bfd.tasks.retention import keep_latest

    print(f"bfd: run {run_id} is already computed: the audit is recorded without a Prefect "
          "flow run (no Prefect API configured; -v runs the flow)", file=sys.stderr)
    s = Store(store)
    series = (args.series if args.series is not None
              else default_series(config.model, config.weights, config.seed,
                                  config.model_args))
    step = args.step if args.step is not None else time_step(started)
    # Ctrl-C's line names the audit from its write on (bfd.cli_interrupt); the series' lock
    # (audit_row), then the run's, as the flow takes them: its results are read whole
    with audit_row(s, series, step, "cli", None, started, writing=recording) as row, \
            run_lock(s, run_id, say_waiting):
        # again, holding the run's lock: a process that held it (waited for above) may have
        # decomposed the run again with other options (bfd decompose RUN --prefix include)
        if computed_run(s, run_id, _chosen_options(args, config)) is None:
            raise RunChanged(f"run {run_id} was decomposed again, with other options or "
                             "damaged, while this audit waited for it: the audit computes it")
        drift_since_previous(s, row, run_id, thresholds.model_dump(), run_seen(store, run_id))
    retention = keep_latest(s, series, args.keep_activations, run_id, lambda line: None)
    index = None if args.no_dashboard else refresh_outputs(store, logging.getLogger("bfd.audit"))
    return {**{k: row[k] for k in ("audit_id", "series", "run_id", "step", "prev_audit_id",
                                   "n_flagged", "drift_note", "prev_step", "skipped")},
            "reused": True, "repaired": [], "how": run_reuse(), "store": store,
            "results": results_path(s, run_id), "dashboard": index, "retention": retention}
