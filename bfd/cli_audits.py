"""The ``bfd`` commands of audits as events: ``bfd audit`` (its options of series and drift,
its report), ``bfd audit-checkpoints`` and ``bfd serve``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime

from bfd import cli
from bfd.tasks.drift_gate import drift_verdict
from bfd.text import shown


def audit_config(config: dict):
    """The typed audit config, its errors naming the command's options (``--n-images``)."""
    from pydantic import ValidationError

    from bfd.flows.params import AuditConfig, describe_errors

    try:
        return AuditConfig(**{**config, "sites": list(config.get("sites", ()))})
    except ValidationError as err:
        raise ValueError(describe_errors(err, cli=True)) from None


# what --series defaults to: bfd audit's (bfd.tasks.audits.default_series) and
# bfd audit-checkpoints' (checkpoints_series), which takes no --weights
AUDIT_SERIES = ("the series this audit extends (default: the model and its weights' source, "
                "e.g. vit_b@pretrained, test_vit@random-seed-0; with --model-arg options, "
                "in brackets: vit_t[reg_tokens=4]@random-seed-0)")
CHECKPOINTS_SERIES = ("the series these audits extend (default: the model and the checkpoints' "
                      "folder or glob, as an absolute path: vit_b@/ckpts)")
# what --format json writes (audit_record, checkpoints_record)
AUDIT_RECORD = ("the audit's audit_id, series, run_id, step, prev_audit_id, n_flagged, "
                "drift_note, drift_compared, skipped, reused, how, store, results, dashboard, "
                "..., and its "
                "flagged drift values")
CHECKPOINTS_RECORD = ("the series, n_files, store, its new audits (each as bfd audit's, with "
                      "its checkpoint), the files left out (bad) and the dashboard")


def add_audit_options(p: argparse.ArgumentParser, series_help: str = AUDIT_SERIES,
                      record_help: str = AUDIT_RECORD) -> None:
    p.add_argument("--series", help=series_help)
    p.add_argument("--drift-threshold", action="append", default=[], metavar="[METRIC=]VALUE",
                   help="flag a change larger than VALUE, 0 to 1 (default 0.05 for every "
                   "metric, each a fraction; head_type's 0.5: its delta is 1 when a head's type "
                   "changed, so any VALUE below 1 flags that and 1 flags nothing), since "
                   "the series' latest earlier audit comparable with this one (audits of "
                   "another model, other images, N, img_size or --prefix between are skipped, "
                   "and said); METRIC=VALUE sets one metric's (frac_pos, frac_int_resid, f_cc, "
                   "head_type, ...; not frac_content, 1 - frac_pos, which drift does not "
                   "compare); repeatable")
    p.add_argument("--fail-on-drift", action="store_true",
                   help="exit with status 3 when any drift is flagged (for CI gates); an "
                   "audit that compared nothing (no earlier audit of the series of this model, "
                   "images, N, ...) passes, with a warning on stderr")
    p.add_argument("--fail-if-not-compared", action="store_true",
                   help="exit with status 3 when an audit compared nothing: no earlier audit "
                   "of its series is comparable (another model, other images, N, ...: said for "
                   "the previous one), the first audit of a series included (it is kept: later "
                   "audits compare with it), with one line on stderr saying why; give "
                   "--fail-on-drift too to fail on flagged drift")
    p.add_argument("--keep-activations", type=int, metavar="K",
                   help="after the audit, keep the activations of the series' K latest runs "
                   "(in series order, and the run just audited) and drop the older runs' "
                   "(their results, tables and audits are kept; an audit of an older run's "
                   "request extracts them again): a recurring audit's disk stays bounded")
    p.add_argument("--no-dashboard", action="store_true",
                   help="do not rebuild <store>/dashboard after the audit")
    p.add_argument("--format", choices=AUDIT_FORMATS, default="text",
                   help="output format (text: the report; json: one object on stdout: "
                   + record_help + "; NaN and infinities as null; timestamps ISO 8601; "
                   "warnings and progress on stderr; the exit status as with text)")


# bfd audit's and audit-checkpoints' --format (the query commands': bfd.cli_read.FORMATS)
AUDIT_FORMATS = ("text", "json")
# what --format json gives of each audit, the same keys on every path (the flow audit, an
# audit recorded without Prefect: bfd.cli_reuse.record_reused_audit)
AUDIT_KEYS = ("audit_id", "series", "run_id", "step", "prev_audit_id", "prev_step",
              "n_flagged", "drift_note", "drift_compared", "skipped", "reused", "repaired",
              "how", "store", "results", "dashboard", "retention")
# and of audit-checkpoints (the flow audit-checkpoints, or bfd.cli_reuse.nothing_to_audit)
CHECKPOINTS_KEYS = ("series", "n_files", "store", "compared", "audits", "bad", "dashboard",
                    "retention")


def _check_keep_activations(args: argparse.Namespace) -> None:
    """``--keep-activations`` refused before any work, by retention's own rule."""
    if args.keep_activations is not None:
        from bfd.storage import check_keep

        check_keep(args.keep_activations, "--keep-activations")


def audit_record(out: dict) -> dict:
    """What ``--format json`` writes of one audit (``out``: what the flow ``audit`` returns,
    with ``checkpoint`` for one of audit-checkpoints): the ``AUDIT_KEYS``, None where absent,
    and its ``flagged`` drift rows (``flagged_rows``)."""
    # drift_compared: whether drift was checked at all (a first audit of its series has no
    # drift_note either: a wrapper that read a null note as "compared" took it for a pass)
    record = {k: out.get(k) for k in AUDIT_KEYS} | {
        "drift_compared": out.get("prev_audit_id") is not None and not out.get("drift_note"),
        "flagged": flagged_rows(out)}
    return record | ({"checkpoint": out["checkpoint"]} if "checkpoint" in out else {})


# what --format json gives of each flagged drift value (the text report's table and lines)
FLAGGED_KEYS = ("layer", "head", "metric", "before", "after", "delta", "threshold",
                "type_before", "type_after")


def flagged_rows(out: dict) -> list[dict]:
    """The drift values the audit ``out`` flagged, as the ``drift`` query gives them, largest
    change first: ``FLAGGED_KEYS``, a head_type row with the head's types before and after
    (``type_before``, ``type_after``; None on the other rows)."""
    if not flagged_count(out):
        return []
    flagged = _flagged_table(out, out["store"])
    types = _head_types(flagged, out["store"])
    return [{k: row[k] for k in FLAGGED_KEYS[:7]}
            | dict(zip(FLAGGED_KEYS[7:], _types_of(row, types), strict=True))
            for row in flagged.to_pylist()]


def _types_of(row: dict, types: dict) -> tuple[str | None, str | None]:
    """A flagged drift row's head types before and after: as the audit kept them, else (drift
    written before it kept them) from ``types`` (``_head_types``); (None, None) for a row of
    another metric."""
    if row["metric"] != "head_type":
        return None, None
    if row.get("type_before") is not None:
        return row["type_before"], row["type_after"]
    return types.get((row["layer"], row["head"]), (None, None))


def _flagged_table(out: dict, store: str):
    """The ``drift`` query's flagged rows of the audit ``out``."""
    from bfd.queries import run_query

    drift = run_query(store, "drift", {"series": out["series"], "audit_id": out["audit_id"]},
                      check=False)
    return drift.filter(drift.column("flagged"))


def _head_types(flagged, store: str) -> dict:
    """(layer, head) -> (type before, type after) of the heads whose type changed among the
    ``flagged`` drift rows, from ``head_type_changes`` of their two runs (their current
    types), where a row does not name them (drift written before it kept them); {} when
    every row does."""
    import pyarrow.compute as pc

    from bfd.queries import run_query

    untyped = pc.equal(flagged.column("metric"), "head_type")
    if "type_before" in flagged.column_names:  # drift that keeps them (not before)
        untyped = pc.and_(untyped, pc.is_null(flagged.column("type_before")))
    if not flagged.num_rows or not pc.any(untyped).as_py():  # the audit kept every type
        return {}
    first = flagged.slice(0, 1).to_pylist()[0]
    stored = run_query(store, "head_type_changes", {"run_a": first["prev_run_id"],
                                                    "run_b": first["run_id"]}, check=False)
    return {(r["layer"], r["head"]): (r["head_type_a"], r["head_type_b"])
            for r in stored.to_pylist()}


def checkpoints_record(out: dict) -> dict:
    """What ``--format json`` writes of audit-checkpoints (``out``: what its flow returns):
    the ``CHECKPOINTS_KEYS``, each audit as ``audit_record`` with the dashboard built once
    after them all (each audit's own ``dashboard`` is null: none is built per checkpoint)."""
    record = {k: out.get(k) for k in CHECKPOINTS_KEYS}
    audits = [audit_record(one) | {"dashboard": out.get("dashboard")} for one in out["audits"]]
    return record | {"audits": audits, "bad": list(out["bad"])}


def print_json(record: dict) -> None:
    """``record`` as the one JSON object on stdout (``bfd.output.write_json_object``)."""
    from bfd.output import stdout_bytes, write_json_object

    write_json_object(record, stdout_bytes())


def drift_thresholds(items: Sequence[str]):
    from pydantic import ValidationError

    from bfd.flows.params import DriftThresholds

    out: dict = {"metrics": {}}
    for item in items:
        key, sep, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--drift-threshold must be VALUE or METRIC=VALUE with a number; "
                             f"got {item!r}") from None
        if not sep:
            out["fraction"] = number
        elif key == "head_type":
            out["head_type"] = number
        else:
            out["metrics"][key] = number
    try:
        return DriftThresholds(**out)
    except ValidationError as err:
        msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise ValueError(f"--drift-threshold: {msg}; got {' '.join(items)}") from None


def say(line: str) -> None:
    """One line on stdout, also from inside a flow run: there ``print`` goes to Prefect's
    logger (``log_prints``), which the command's console does not show."""
    sys.stdout.write(f"{line}\n")


# Flagged drift shown row by row, at most this many value rows and as many head-type lines;
# above it a summary per metric comes first and the rest is named by the query that lists it.
DRIFT_ROWS_SHOWN = 20


def print_audit(out: dict, store: str) -> int:
    """The audit's line and its flagged drift (``print_flagged``); returns the number of
    flagged values."""
    from bfd.tasks.audits import drift_said

    say(f"audit {out['audit_id']} of series {out['series']} (step {out['step']}): run "
        f"{out['run_id']} {out['how']}")
    say(f"drift: {drift_said(out)}")
    close = close_series(out, store)
    if close:
        say(f"note: series {out['series']} is new; series of a close name in this store: "
            f"{', '.join(close)} (a mistyped --series starts a new series; docs/layout.md, "
            "Audit events, says how to remove an audit)")
    if flagged_count(out):
        print_flagged(_flagged_table(out, store), store)
    note = energy_note(out, store)
    if note:
        say(f"note: {note}")
    return flagged_count(out)


# a head whose logit energy per image changed by more than this factor (either way) against
# the audit compared with is said after the drift (bfd.cli_audits.energy_note)
ENERGY_FACTOR = 10.0


def energy_note(out: dict, store: str) -> str | None:
    """The heads whose logit energy changed more than ``ENERGY_FACTOR``-fold against the audit
    compared with (``head_energy_changes`` of the two runs), which neither the shares nor
    drift see (trial 32: layer 3's qkv replaced, its heads' energy 5e5-fold, flagged 32 values
    in layers 4-11 and none in layer 3); None when it compared nothing, its run is the one
    compared with, or no head changed so."""
    import math

    from bfd.queries import run_query
    from bfd.storage import Store, read_audits

    if out["prev_audit_id"] is None or out.get("drift_note"):
        return None
    before = next((r["run_id"] for r in read_audits(Store(store), out["series"])
                   if r["audit_id"] == out["prev_audit_id"]), None)
    if before is None or before == out["run_id"]:
        return None
    params = {"run_a": before, "run_b": out["run_id"]}
    rows = [r for r in run_query(store, "head_energy_changes", params, check=False).to_pylist()
            if r["log_ratio"] is not None and abs(r["log_ratio"]) > math.log(ENERGY_FACTOR)]
    if not rows:
        return None
    by_layer: dict[int, list[int]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], []).append(r["head"])
    where = "; ".join(f"layer {layer}: heads {layer_ranges(heads)}"
                      for layer, heads in sorted(by_layer.items()))
    largest = max(rows, key=lambda r: abs(r["log_ratio"]))
    return (f"the logit energy of {len(rows)} head(s) changed more than "
            f"{ENERGY_FACTOR:g}-fold against the audit compared with ({where}; largest "
            f"x{largest['ratio']:.3g} at layer {largest['layer']} head {largest['head']}), which "
            "no share and so no drift metric sees (a head's scale): bfd query "
            f"head_energy_changes --param run_a={before} --param run_b={out['run_id']} "
            f"--store {shlex.quote(store)}")


def close_series(out: dict, store: str) -> list[str]:
    """For the first audit of a series, the store's other series of a name close to its
    (difflib's ratio at least 0.8: ``test_vit@random-seed0`` beside ``test_vit@random-seed-0``),
    the closest first; [] otherwise."""
    import difflib

    from bfd.storage import Store, read_audits

    if out.get("prev_audit_id") is not None or out.get("drift_note"):
        return []
    known = {r["series"] for r in read_audits(Store(store))} - {out["series"]}
    return difflib.get_close_matches(out["series"], sorted(known), n=3, cutoff=0.8)


def flagged_count(out: dict) -> int:
    """The drift values an audit flagged (``out``: what the flow ``audit`` returns): none
    when it compared nothing."""
    if out["prev_audit_id"] is None or out.get("drift_note"):
        return 0
    return out["n_flagged"] or 0


def layer_ranges(layers) -> str:
    """Layer indices in short: ``0-3, 7, 9-11``."""
    spans: list[list[int]] = []
    for layer in sorted(set(layers)):
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def drift_summary(rows: Sequence[dict], types: dict) -> list[str]:
    """One line per metric of the flagged ``rows`` (drift rows): how many rows or heads, in
    which layers, the largest |delta|; for head_type, how many heads changed from which type
    to which (``_types_of``: as the audit kept them, else ``types``, (layer, head) ->
    (before, after); ``?`` for a type known to neither)."""
    from bfd.tasks.drift import drift_metrics

    order = {m: k for k, m in enumerate(drift_metrics())}
    by_metric: dict[str, list[dict]] = {}
    for r in rows:
        by_metric.setdefault(r["metric"], []).append(r)
    lines = []
    for metric in sorted(by_metric, key=lambda m: (order.get(m, len(order)), m)):
        mine = by_metric[metric]
        where = f"in layers {layer_ranges(r['layer'] for r in mine)}"
        if metric == "head_type":
            changes: dict[str, int] = {}
            for r in mine:
                change = " -> ".join(t or "?" for t in _types_of(r, types))
                changes[change] = changes.get(change, 0) + 1
            said = ", ".join(f"{n} {change}" for change, n in
                             sorted(changes.items(), key=lambda kv: -kv[1]))
            lines.append(f"  head_type: {len(mine)} heads changed {where} ({said})")
            continue
        largest = max(abs(r["delta"]) for r in mine)
        what = (f"{len(mine)} heads {where}" if mine[0]["head"] is not None else
                f"{len(mine)} {'layer' if len(mine) == 1 else 'layers'} "
                f"({layer_ranges(r['layer'] for r in mine)})")
        lines.append(f"  {metric}: {what}, max |delta| {largest:.3g}")
    return lines


def print_flagged(flagged, store: str) -> None:
    """An audit's flagged drift rows (``flagged``: rows of the ``drift`` query): when more
    than ``DRIFT_ROWS_SHOWN``, a summary per metric first (``drift_summary``); then the
    fractions that moved, largest first, as a table, and each head whose type changed as
    ``layer L head H: before -> after`` (types from ``head_type_changes``), each list capped
    at ``DRIFT_ROWS_SHOWN`` with the query that lists the rest."""
    import pyarrow.compute as pc

    if not flagged.num_rows:
        return
    first = flagged.slice(0, 1).to_pylist()[0]
    is_type = pc.equal(flagged.column("metric"), "head_type")
    values = flagged.filter(pc.invert(is_type))
    changed = flagged.filter(is_type).to_pylist()
    types = _head_types(flagged, store)
    at = f" --store {shlex.quote(store)}"
    if flagged.num_rows > DRIFT_ROWS_SHOWN:
        for line in drift_summary(flagged.to_pylist(), types):
            say(line)
    if values.num_rows:
        columns = ["layer", "head", "metric", "before", "after", "delta", "threshold"]
        cli._print_table(values.slice(0, DRIFT_ROWS_SHOWN).select(columns), "table")
        if values.num_rows > DRIFT_ROWS_SHOWN:
            say(f"{values.num_rows - DRIFT_ROWS_SHOWN} more: bfd query drift --param "
                f"series={shlex.quote(first['series'])} --param "
                f"audit_id={first['audit_id']}{at}")
    if changed:
        say(f"head types changed ({len(changed)}):")
        for r in sorted(changed, key=lambda r: (r["layer"], r["head"]))[:DRIFT_ROWS_SHOWN]:
            # a type neither kept by the audit nor held by the results now: said as unknown
            before, after = (t or "?" for t in _types_of(r, types))
            say(f"  layer {r['layer']} head {r['head']}: {before} -> {after}")
        if len(changed) > DRIFT_ROWS_SHOWN:
            say(f"  {len(changed) - DRIFT_ROWS_SHOWN} more: bfd query head_type_changes "
                f"--param run_a={first['prev_run_id']} --param run_b={first['run_id']}{at}")


def drift_exit(n_flagged: int, fail_on_drift: bool, audits: Sequence[dict] = (),
               fail_if_not_compared: bool = False) -> int:
    """Exit status 3 when the drift gate fails (``bfd.tasks.drift_gate.drift_verdict``, the
    flows' rule too): drift flagged under ``--fail-on-drift``, or an audit compared nothing
    under ``--fail-if-not-compared`` (one line each on stderr saying why). Else a gate under
    ``--fail-on-drift`` also learns, on stderr, of each audit that compared nothing with any
    earlier audit (its ``drift_note``): it passes, with nothing checked."""
    verdict = drift_verdict(n_flagged, fail_on_drift, audits, fail_if_not_compared,
                            spell=lambda name: "--" + name.replace("_", "-"))
    for line in verdict.warnings:
        print(f"bfd: warning: {line}", file=sys.stderr)
    for line in verdict.failures:
        print(f"bfd: {line}", file=sys.stderr)
    return 3 if verdict.failures else 0


def _check_to_compute(args: argparse.Namespace, config, store: str) -> None:
    """The checks of an audit whose run is to compute, before any of it: the server's start-up
    (the longer) overlaps the import of torch and timm; an unknown model or layers out of
    range are refused before Prefect is imported, a model timm does not know before the
    server starts; then the disk space and the placement."""
    info = cli._check_model_first(config)
    if args.store_activations:  # a stats-only run writes no activations
        cli._check_space(config, store, info)
    cli._check_placement(args, config)


def cmd_audit(args: argparse.Namespace) -> int:
    """``bfd audit``: the flow ``audit``, or for a run already computed the audit's record
    alone, without Prefect (``bfd.cli_reuse``)."""
    from bfd.cli_interrupt import NOT_RECORDED_NOTHING_KEPT, NOT_RECORDED_SHARDS_KEPT, say
    from bfd.cli_reuse import computed_run_of, record_reused_audit
    from bfd.flows.params import DEMO_CONFIG, require_model
    from bfd.queries import run_query
    from bfd.storage import Store, require_writable
    from bfd.tasks.audits import check_place, check_series, default_series

    started = datetime.now(UTC)  # an audit recorded without Prefect counts its checks too
    if args.demo:
        refuse_demo_request_options(args)
        # what the demo audits is fixed; how (device, batch size, ...) is the user's
        how = cli._extract_config(argparse.Namespace(**{**vars(args), "model": "demo"}))
        config = audit_config(how | DEMO_CONFIG)
    else:
        config = audit_config(cli._extract_config(args))
    model = require_model(config, cli=True)
    decompose = cli.decompose_options(args)
    if not args.store_activations and (args.workers != 1 or args.dask_address):
        raise ValueError("--no-store-activations runs both forwards in this process; it takes "
                         "neither --workers nor --dask-address")
    store = cli._store(args)
    cli._check_request_early(args, config)
    # an empty --series '' is refused (check_place), not taken for the default
    series = (args.series if args.series is not None
              else default_series(model, config.weights, config.seed, config.model_args))
    check_place(series, args.step)
    check_series(Store(store), series)
    thresholds = drift_thresholds(args.drift_threshold)
    _check_keep_activations(args)
    missing = not os.path.exists(store)
    if args.dry_run:
        code = print_plan(args, config, store, series,
                          computed_run_of(args, config, store, any_path=True))
        cli.say_new_store(store, missing, dry_run=True)
        return code
    reused = computed_run_of(args, config, store)
    if reused is None:
        _check_to_compute(args, config, store)
    require_writable(store)  # an audit always writes its tables
    if args.demo:
        print("demo: random-init (untrained) vit_tiny_patch16_224 on 64 embedded sample images;"
              " weights are labelled 'random' everywhere", file=sys.stderr)
    out = None
    if reused is not None:
        from bfd.tasks.audits import RunChanged

        try:
            out = record_reused_audit(args, config, store, thresholds, reused, started)
        except RunChanged as e:  # nothing recorded: audited as a run to compute
            print(f"bfd: {e}", file=sys.stderr)
            _check_to_compute(args, config, store)
    if out is None:
        from bfd.cli_interrupt import audit_progress
        from bfd.flows import progress
        from bfd.flows.audit import audit
        from bfd.flows.params import DecomposeParams

        # Ctrl-C's line: bfd.cli.main's NOT_RECORDED until now, as for a run already computed
        # shards may be extracted from now on; a stats-only run keeps none
        say(NOT_RECORDED_SHARDS_KEPT if args.store_activations else NOT_RECORDED_NOTHING_KEPT)
        with progress.listening(audit_progress):  # Ctrl-C's line names the audit once written
            out = cli._with_bars(audit, config, store, workers=args.workers,
                                 dask_address=args.dask_address,
                                 gpu_resources=args.gpu_resources, series=args.series,
                                 step=args.step, drift=thresholds, trigger="cli",
                                 dashboard=not args.no_dashboard,
                                 store_activations=args.store_activations,
                                 keep_activations=args.keep_activations,
                                 decompose_options=DecomposeParams(**decompose))
    cli.say_new_store(store, missing)
    if args.format == "json":  # the record alone on stdout; the warnings on stderr
        print_json(audit_record(out))
        print_model_check_warning(store, out["run_id"])
        print_interval_warning(store, out["run_id"])
        print_image_notes(store, out["run_id"], None if args.demo else args.n_images)
        return drift_exit(flagged_count(out), args.fail_on_drift, [out],
                          args.fail_if_not_compared)
    from bfd.storage import model_label

    profile = run_query(store, "layer_profile", {"run_id": out["run_id"]}, check=False)
    # heads of no type (no energy: a pruned head) counted where the run has any (trial 29: a
    # layer of 2 heads read "1 0 0", the undefined one said nowhere)
    undefined = ("n_heads_undefined" in profile.column_names
                 and any(profile.column("n_heads_undefined").to_pylist()))
    cols = [c for c in ("layer", "frac_pos", "frac_pos_resid", "f_pp", "f_pc", "f_cp", "f_cc",
                        "n_heads_pp", "n_heads_cp", "n_heads_cc",
                        *(("n_heads_undefined",) if undefined else ()))
            if c in profile.column_names]
    print(f"\nBFD audit of {model_label(model, config.model_args)} (weights: "
          f"{shown(config.weights)}), run {out['run_id']}")
    print(positions_line(store, out["run_id"]))
    cli._print_table(profile.select(cols), "table")
    print()
    n_flagged = print_audit(out, store)
    print(f"\nresults: {out['results']}\ntables:  {store}/tables  "
          f"(try: bfd query model_summary --store {shlex.quote(store)})")
    print_dashboard(out.get("dashboard"), store)
    for line in out.get("retention") or []:
        print(line)
    print_statistics(store, out["run_id"], profile, args.demo)
    print_model_check_warning(store, out["run_id"])
    print_image_notes(store, out["run_id"], None if args.demo else args.n_images)
    return drift_exit(n_flagged, args.fail_on_drift, [out], args.fail_if_not_compared)


def print_plan(args: argparse.Namespace, config, store: str, series: str,
               reused: str | None) -> int:
    """``bfd audit --dry-run``: what the audit would record, compute and write, and what its
    drift would compare with; its request checked first as the audit checks it (an unknown
    model, layers out of range, weights that do not load or fit, images that do not list:
    refused the same way). Nothing is computed or recorded, no Prefect started; torch and
    timm are imported only for a run to compute (its size)."""
    from bfd.tasks.audits import time_step

    now = time_step(datetime.now(UTC))
    step = args.step if args.step is not None else now
    if reused is not None:
        run, drift, notes = _plan_to_reuse(store, series, step, reused)
    else:  # the model, its weights and the images, as the audit would plan them
        run, drift, notes = _plan_to_compute(args, config, store, series, step)
    say("dry run: nothing is computed or recorded")
    say(f"audit: series {series}, "
        + (f"step {step}" if args.step is not None else f"step its start time ({now} now)")
        + f"; store {shown(store)}")
    say(run)
    for note in notes:
        say(f"note: {note}")
    say(f"drift: {drift}")
    return 0


def _plan_to_reuse(store: str, series: str, step: int, run_id: str
                   ) -> tuple[str, str, list[str]]:
    """``print_plan``'s run and drift lines for a run computed already with these options,
    and its notes (none: nothing is replaced)."""
    from bfd.storage import Store
    from bfd.tasks.audits import compared_audit

    return (f"run {run_id}: computed already with these options: reused, nothing computed",
            _drift_line(*compared_audit(Store(store), series, step, run_id)[:2]), [])


def _plan_to_compute(args: argparse.Namespace, config, store: str, series: str,
                     step: int) -> tuple[str, str, list[str]]:
    """``print_plan``'s run and drift lines for a run to compute: its id, what of it is stored
    already (an interrupted audit's shards, an extraction not yet decomposed) and what is left
    to write; the audit its drift would compare with, as the audit chooses it, from the run's
    request (its images hashed, its N as listed); and notes: for a run published with other
    decompose options, the line saying the audit replaces its results (``options_replaced``),
    for one published by another bfd's method, the line saying it is computed again
    (``other_method_said``). Imports torch and timm."""
    import json

    from bfd import cli
    from bfd.cli_reuse import _chosen_options
    from bfd.output import count, size_text
    from bfd.storage import Store, request_columns, with_stats_only
    from bfd.tasks.audits import (
        compared_audit,
        computed_run,
        options_replaced,
        other_method,
        other_method_said,
    )
    from bfd.tasks.extract import (
        ExtractConfig,
        disk_free,
        plan_request,
        refuse_before_work,
    )
    from bfd.tasks.options import DecomposeOptions

    extract = config.extract_config()
    cfg = ExtractConfig(**(extract if args.store_activations else with_stats_only(extract)))
    info = refuse_before_work(cfg)
    planned = plan_request(store, cfg)
    rid = planned.run_id
    # a run computed already, its activations (if it keeps any) all stored intact, that the
    # request keys did not find (its request spelled otherwise: --n-images 20 on a folder of
    # 20 beside one audited without it): the audit's flow reuses it, and so says the dry run
    # (trial 24: "to decompose and publish")
    intact = not args.store_activations or (
        not planned.damaged and all(s.index in planned.done for s in planned.shards))
    if intact and computed_run(Store(store), rid, _chosen_options(args, config)) is not None:
        return _plan_to_reuse(store, series, step, rid)
    n_images = len(planned.records)
    shape = (f"{count(n_images, 'image')} x {count(len(planned.layers), 'layer')} x "
             f"{count(len(cfg.sites), 'site')}, {info.num_tokens} tokens of width {info.width}")
    if not args.store_activations:
        run = (f"run {rid}: to compute from two forward passes over the images ({shape}); no "
               "activations kept")
    else:
        free = disk_free(store)
        disk = f"; the store's disk has {size_text(free)} free" if free is not None else ""
        n, todo = len(planned.shards), [s for s in planned.shards if s.index not in planned.done]
        damaged = (f"; {count(len(planned.damaged), 'fault')} in shards marked done: those "
                   "shards are extracted again" if planned.damaged else "")
        if not todo:
            run = (f"run {rid}: extracted already ({shape}, all {count(n, 'shard')} stored "
                   f"intact{damaged}): to decompose and publish, nothing to extract")
        else:
            kept = (f"stored in part: {len(planned.done)} of {count(n, 'shard')} kept, "
                    if planned.done else f"to compute ({shape}): ")
            run = (f"run {rid}: {kept}{count(len(todo), 'shard')} "
                   f"({count(sum(s.size for s in todo), 'image')}) to extract, at most "
                   f"{size_text(planned.to_write)} to write"
                   + ("" if planned.done else
                      " (its activations, model tensors and results)") + f"{damaged}{disk}")
    # the runs row the run would have, its N as listed: an image that does not decode
    # lowers it, and an earlier audit that decoded all of its images is then of another N
    copies = [r for r in planned.records if r.duplicate_of is not None]  # skipped for sure
    row = {**request_columns(planned.request), "n_skipped": len(copies), "status": "complete",
           "depth": info.depth, "num_heads": info.num_heads, "width": info.width,
           "config_json": json.dumps({"request": planned.request.to_json_dict(),
                                      "decompose": cli.decompose_options(args)})}
    before, note, _ = compared_audit(Store(store), series, step, rid, after=row)
    listed = count(n_images - len(copies), "listed image") + (" (copies left out)" if copies
                                                             else "")
    drift = _drift_line(before, note, f", if all {listed} decode (one that does not lowers N, "
                        "and the audit then compares with an earlier audit of that N, if any)")
    replaced = options_replaced(Store(store), rid,
                                DecomposeOptions(**cli.decompose_options(args)).to_dict())
    notes = [replaced] if replaced else []
    if copies:  # each content counted once (bfd.images.DUPLICATE)
        notes.append(f"{len(copies)} of the {count(n_images, 'listed image')} are copies (the "
                     f"same bytes) of another listed image and would be counted once: "
                     f"{copies[0].id} (of {copies[0].duplicate_of})"
                     + (", ..." if len(copies) > 1 else ""))
    method = other_method(Store(store), rid)
    if method is not None:
        todo = [] if not args.store_activations else [
            s.index for s in planned.shards if s.index not in planned.done]
        notes.append(other_method_said(rid, method, todo, stats_only=not args.store_activations,
                                       planned=True))
    from bfd.flows.runners import capped_workers
    from bfd.models import resolve_device

    # as the audit would warn (trial 33: the dry run said nothing of it)
    _, capped = capped_workers(args.workers, resolve_device(extract.get("device", "auto")))
    if capped:
        notes.append(capped)
    return run, drift, notes


def _drift_line(before: dict | None, note: str | None, caveat: str = "") -> str:
    """The dry run's drift line, from ``compared_audit``'s audit and note."""
    if before is None:
        return "first audit of this series, nothing to compare with"
    if note:
        return f"nothing compared ({note})"
    return f"compared with audit {before['audit_id']} (step {before['step']}){caveat}"


def copies_said(out: dict) -> str:
    """The files that hold another file's weights (a byte copy of a checkpoint: one request,
    so one audit, at the other file's step, and no point at their own), counted apart from
    those audited before (trial 33: in a new series a copy was "already audited"): ``, 1
    holds another file's weights, audited at that file's step, none at its own:
    step_4000.pth (the weights of step_3000.pth)``, or "" (``bfd.tasks.audits.
    pending_checkpoints``' ``copies``)."""
    copies = out.get("copies") or []
    if not copies:
        return ""
    listed = "; ".join(copies[:5]) + (f"; ... ({len(copies)} in all)" if len(copies) > 5 else "")
    return (f", {len(copies)} {'holds' if len(copies) == 1 else 'hold'} another file's "
            f"weights, audited at that file's step, none at its own: {listed}")


def audited_before(out: dict, n_new: int) -> int:
    """The checkpoint files of ``out`` (a plan, or audit-checkpoints' record) audited before
    with the same request: neither new (``n_new``), left out nor a copy of another's
    weights (``copies_said``)."""
    return out["n_files"] - n_new - len(out["bad"]) - len(out.get("copies") or [])


def print_checkpoints_plan(args: argparse.Namespace, config, store: str, series: str) -> int:
    """``bfd audit-checkpoints --dry-run``: the checkpoints it would audit, in step order,
    those already audited and those left out, as the flow would find them; the request
    checked as the command checks it (torch and timm only when a checkpoint is to audit);
    each checkpoint to audit loaded as its audit would load it (one that does not load or
    fit the model is left out); nothing is computed or recorded, no Prefect started. Exit 2
    when a file is left out, as the audit would."""
    from pathlib import Path

    from bfd.cli_reuse import checkpoints_plan
    from bfd.tasks.audits import published_by

    plan = checkpoints_plan(args, config, store, series)
    if plan is None:
        raise ValueError(f"the checkpoints of {args.checkpoints!r} cannot be listed")
    todo, bad = plan["todo"], plan["bad"]
    if todo:
        from bfd.tasks.audits import fitting_checkpoints

        cli._check_model_request(config)
        # each loaded as the audit loads it: one that does not load or fit is left out (the
        # flow's own count to audit, the same)
        todo = fitting_checkpoints(plan["request"], todo, bad)
    n_seen = audited_before(plan, len(todo))
    say("dry run: nothing is computed or recorded")
    say(f"series {series}; store {store}; {plan['n_files']} checkpoint file(s): "
        f"{len(todo)} to audit, {n_seen} already audited with the same request "
        f"({plan['compared']}){copies_said(plan)}, {len(bad)} left out")
    for one in todo:
        # one audited before whose run an older bfd published: audited again, its run
        # decomposed again (bfd.core.method)
        again = (f"  (audited before, but its run was published by "
                 f"{published_by(one['method'])}: its results are computed again)"
                 if "method" in one else "")
        say(f"  to audit: step {one['step']}  {Path(one['path']).name}{again}")
    for line in bad:
        say(f"  left out: {line}")
    return 2 if bad else 0


def positions_line(store: str, run_id: str) -> str:
    """Which tokens the run's shares are over, in one line: its patch grid, and its prefix
    tokens (class, distillation, register) left out or counted (the decompose --prefix
    option), from its ``runs`` row."""
    from bfd.cli_read import PREFIX_OPTION_SQL
    from bfd.queries import run_sql

    (row,) = run_sql(store, f"SELECT grid_h, grid_w, prefix_tokens, {PREFIX_OPTION_SQL} AS "
                     "prefix FROM runs WHERE run_id = $run_id", {"run_id": run_id}).to_pylist()
    patches = f"the {row['grid_h']} x {row['grid_w']} = {row['grid_h'] * row['grid_w']} patches"
    n = row["prefix_tokens"] or 0
    if not n:
        return f"positions: {patches} (the model has no prefix token)"
    tokens = f"{n} prefix token{'s' if n > 1 else ''} (class, distillation or register)"
    if row["prefix"] == "include":
        return f"positions: {patches} and its {tokens}, each one more position (--prefix include)"
    return f"positions: {patches}; its {tokens} left out (--prefix exclude, the default)"


def print_dashboard(index: str | None, store: str) -> None:
    """The line naming the dashboard's ``index.html`` and how to open it, when the audit
    rebuilt it (``index``; None: ``--no-dashboard``, nothing audited, or its refresh failed,
    which said so)."""
    if index:
        print(f"dashboard: {index}  (open it in a browser, or serve it: bfd dashboard --serve "
              f"--store {shlex.quote(store)})")


# the options that would change what --demo audits (bfd.flows.params.DEMO_CONFIG, the input
# size and the seed of its random init) or its figures (the decomposition's options that change
# results: its series would hold them as the demo's); how it runs (--device, --batch-size, ...)
# may be given
DEMO_FIXED = ("model", "weights", "images", "n_images", "layers", "sites", "img_size", "dtype",
              "seed", "model_arg", "prefix", "control_seed", "compute_dtype", "jackknife_groups",
              "ci_target")


def refuse_demo_request_options(args: argparse.Namespace) -> None:
    """--demo is one fixed request: an option that would change it is refused rather than
    ignored (an audit of another model would be recorded as the demo's).

    Raises:
        ValueError: One line naming the options given.
    """
    defaults = cli.build_parser().parse_args(["audit", "--demo"])
    given = [f"--{k.replace('_', '-')}" for k in DEMO_FIXED
             if getattr(args, k) != getattr(defaults, k)]
    if given:
        raise ValueError(f"--demo audits a fixed request (random-init vit_tiny_patch16_224 on "
                         "the 64 embedded sample images, decomposed with the default options); "
                         f"it takes no {', '.join(given)}: "
                         "drop them, or drop --demo and give --model")


def print_statistics(store: str, run_id: str, profile, demo: bool) -> None:
    """The chance-corrected shares with their intervals, how to read them after the demo,
    and a warning when N is too small for the target interval width (docs/method.md)."""
    cols = [c for c in ("layer", "frac_pos", "frac_pos_chance", "frac_pos_adj",
                        "frac_pos_adj_lo", "frac_pos_adj_hi", "f_pp_adj", "f_pc_adj",
                        "f_cp_adj", "f_cc_adj") if c in profile.column_names]
    print("\nchance-corrected shares, 95 % intervals over images (docs/method.md):")
    cli._print_table(profile.select(cols), "table")
    if demo:
        print_demo_reading(store, run_id, profile)
    print_interval_warning(store, run_id)


def print_interval_warning(store: str, run_id: str) -> None:
    """A warning on stderr when N is too small for the target interval width, or for any
    interval (docs/method.md)."""
    from bfd.queries import run_sql

    sql = ("SELECT max(ci_halfwidth) AS hw, max(n_images_for_target) AS need, "
           "any_value(ci_target) AS target, any_value(n_images) AS n, (SELECT any_value(CASE "
           "WHEN json_valid(config_json) THEN json_extract(config_json, "
           "'$.decompose.jackknife_groups') END) FROM runs WHERE run_id = $run_id) AS groups "
           "FROM layers WHERE run_id = $run_id")
    row = run_sql(store, sql, {"run_id": run_id}).to_pylist()[0]
    hw, target = row["hw"], row["target"]
    if str(row["groups"]) == "0":  # asked for: --jackknife-groups 0
        print("bfd: note: intervals are off (--jackknife-groups 0): the shares are point "
              "estimates", file=sys.stderr)
    elif hw is not None and target is not None and hw == hw and hw > target:
        print(f"bfd: warning: with N={row['n']} images the 95 % intervals of the main shares "
              f"reach ±{hw:.3f}, wider than the target ±{target:g}; about "
              f"{int(row['need'])} images would reach it", file=sys.stderr)
    elif row["n"] is not None and (hw is None or hw != hw):
        print(f"bfd: warning: with N={row['n']} images no interval could be computed (the "
              "jackknife leaves out one group of images at a time and needs at least 2 images "
              "left: N >= 3); the shares are point estimates",
              file=sys.stderr)


def print_model_check_warning(store: str, run_id: str) -> str | None:
    """``bfd.core.model_check_limit``'s warning on stderr when the run's check against the
    model failed (above ``MODEL_CHECK_LIMIT``: docs/checks.md); returns it (None when it
    passed)."""
    from bfd.core.model_check_limit import model_check_warning
    from bfd.queries import run_sql

    rows = run_sql(store, "SELECT site, layer, model_logit_residual, model_attn_residual "
                   "FROM layers WHERE run_id = $run_id ORDER BY site, layer",
                   {"run_id": run_id}).to_pylist()
    line = model_check_warning(run_id, rows)
    if line:
        print(f"bfd: {line}", file=sys.stderr)
    return line


def print_demo_reading(store: str, run_id: str, profile) -> None:
    """After ``--demo``: how to read its shares, with this run's own figures (a random-init
    ViT's random pos_embed is real, if small, position: its heads' corrected shares lie above
    zero too, so what tells a trained ViT is their size), where each head's intervals are, and
    what to try next."""
    from bfd.queries import run_sql

    pos = profile.column("frac_pos_adj").to_numpy(zero_copy_only=False)
    cc = profile.column("f_cc_adj").to_numpy(zero_copy_only=False)
    heads = run_sql(store, "SELECT count(*) AS n, count_if(f_cp_adj_lo > 0) AS above, "
                    "max(f_cp_adj) AS cp, max(f_pp_adj) AS pp, count_if(head_type <> "
                    "'content-content') AS other FROM heads WHERE run_id = $run_id",
                    {"run_id": run_id}).to_pylist()[0]
    kinds = ("the heads are content-content" if not heads["other"] else
             f"{heads['n'] - heads['other']} of its {heads['n']} heads are content-content")
    text = (
        "How to read this: frac_pos counts the noise of pos, a mean over only 64 images, "
        "as position (frac_pos_chance is that noise's part); frac_pos_adj [lo, hi] removes "
        f"it. In this random-init network it is small ({pos.min():.1%} to {pos.max():.1%}) "
        f"and {kinds} (f_cc_adj {cc.min():.2f} to {cc.max():.2f}), as an untrained ViT should "
        "be. Its random pos_embed is real, if small, position: the f_cp_adj interval of "
        f"{heads['above']} of its {heads['n']} heads lies above zero, with f_cp_adj at most "
        f"{heads['cp']:.3f} and f_pp_adj at most {heads['pp']:.4f}. So a trained ViT shows "
        "itself by size, not by a share above zero: a larger positional share in its early "
        "layers, and heads of type content-position or position-position (n_heads_cp, "
        "n_heads_pp), whose f_cp_adj or f_pp_adj is many times these."
    )
    print("\n" + textwrap.fill(text, 96))
    sql = ("SELECT layer, head, head_type, f_cp_adj, f_cp_adj_lo, f_cp_adj_hi, f_pp_adj, "
           f"f_pp_adj_lo, f_pp_adj_hi FROM heads WHERE run_id = '{run_id}'")
    # in double quotes: the statement holds single quotes, and no character a shell expands
    # in double quotes (a run id is a model name and a hash)
    print(f"Each head's corrected shares and their 95 % intervals:\n  bfd sql \"{sql}\" "
          f"--store {shlex.quote(store)}")
    print("Next, a pretrained model from the timm cache or a weights file:\n"
          "  bfd audit --model vit_small_patch16_224.augreg_in21k --images <folder> "
          "--n-images 256\n"
          "  bfd audit --model vit_small_patch16_224 --weights <model.safetensors>")
    print(textwrap.fill(
        "On your own images, position is position over those images: a spatial layout they "
        "share (a centre bias, sky at the top) counts as position too, with or without the "
        "model. Audit them again with every other image mirrored, or compare with --images "
        "samples and pos_embed_cos, before reading a positional share or head as the "
        "model's (docs/method.md, Stage 1).", 96))


def print_image_notes(store: str, run_id: str, requested: int | None) -> None:
    """Warnings about the images an audit saw: fewer than ``--n-images`` asked for, and
    images that could not be read (left out of every figure)."""
    from bfd.images import DUPLICATE
    from bfd.queries import run_sql

    sql = ("SELECT images, n_images, coalesce(n_skipped, 0) AS skipped, (SELECT count(*) FROM "
           "images AS i WHERE i.run_id = $run_id AND i.status = 'skipped' AND starts_with("
           "i.error, $copy)) AS copies FROM runs WHERE run_id = $run_id")
    # a copy's reason as bfd.images writes it, to its first placeholder
    copy = DUPLICATE.partition("{")[0]
    rows = run_sql(store, sql, {"run_id": run_id, "copy": copy}).to_pylist()
    if not rows:
        return
    row = rows[0]
    if requested is not None and row["n_images"] < requested:
        print(f"bfd: warning: --n-images {requested}, but {row['images']} holds "
              f"{row['n_images']} images; all {row['n_images']} were audited", file=sys.stderr)
    listed = (f"(bfd sql \"SELECT * FROM images WHERE run_id = '{run_id}' AND status <> "
              "'ok'\" lists them)")
    if row["copies"]:  # each image once: a copy counted twice narrows every interval
        print(f"bfd: warning: {row['copies']} of {row['n_images']} images are copies (the same "
              "bytes) of another listed image and were counted once " + listed,
              file=sys.stderr)
    if row["skipped"] - row["copies"]:
        print(f"bfd: warning: {row['skipped'] - row['copies']} of {row['n_images']} images could "
              f"not be read and were left out {listed}", file=sys.stderr)


def cmd_audit_checkpoints(args: argparse.Namespace) -> int:
    """``bfd audit-checkpoints``: the flow ``audit-checkpoints``, or for a folder with nothing
    to audit its line alone, without Prefect (``bfd.cli_reuse.nothing_to_audit``)."""
    from bfd.cli_reuse import nothing_to_audit
    from bfd.files import WEIGHT_SUFFIXES
    from bfd.tasks.audits import check_place, checkpoint_files, checkpoints_series

    config = audit_config(cli._extract_config(args))
    decompose = cli.decompose_options(args)
    thresholds = drift_thresholds(args.drift_threshold)
    _check_keep_activations(args)
    # the request checked as bfd audit checks it, before any audit of it is recorded: each
    # checkpoint's first bytes (an unreadable one is left out and named before the first
    # audit; all of them unreadable is refused), then the other options ('random' stands for
    # the weights)
    files = checkpoint_files(args.checkpoints)
    if not files:  # a mistyped glob or folder: said at once, not as "everything is done"
        raise ValueError(f"no checkpoint file in {args.checkpoints!r} (looked for "
                         f"{', '.join(WEIGHT_SUFFIXES)}); nothing to audit")
    bad = unreadable_checkpoints(files)
    if len(bad) == len(files):  # nothing to audit: refused before anything is recorded
        return print_left_out(bad, "")
    cli._check_request_early(args, config)
    series = (args.series if args.series is not None
              else checkpoints_series(config.model, args.checkpoints, config.model_args))
    check_place(series)
    store = cli._store(args)
    missing = not os.path.exists(store)
    if args.dry_run:
        code = print_checkpoints_plan(args, config, store, series)
        cli.say_new_store(store, missing, dry_run=True)
        return code
    # nothing to audit: said without torch, timm or Prefect, as the flow would say it
    out = nothing_to_audit(args, config, store, series)
    as_json = args.format == "json"
    lines = CheckpointLines(store, quiet=as_json)  # json: the left-out lines alone (stderr)
    if out is None:
        cli._check_model_request(config)
        cli._check_placement(args, config)
        lines.left_out(bad)  # known now: said before the first audit, not after the last
        from bfd.cli_interrupt import CheckpointsInterrupt, say
        from bfd.flows import progress
        from bfd.flows.checkpoints import CheckpointsLeftOut, audit_checkpoints
        from bfd.flows.params import DecomposeParams

        interrupt = CheckpointsInterrupt()  # Ctrl-C's line names the audits recorded
        say(interrupt.line)
        try:
            # each checkpoint's lines once its audit is done
            with progress.listening(lines), progress.listening(interrupt):
                out = cli._with_bars(audit_checkpoints, args.checkpoints,
                                     config.model_dump(exclude={"weights"}), store,
                                     series=args.series, drift=thresholds,
                                     workers=args.workers, dask_address=args.dask_address,
                                     gpu_resources=args.gpu_resources,
                                     dashboard=not args.no_dashboard,
                                     keep_activations=args.keep_activations,
                                     decompose_options=DecomposeParams(**decompose))
        except CheckpointsLeftOut as err:  # the flow run is Failed; its left-out files end here
            out = err.out
        cli.say_new_store(store, missing)
    if as_json:  # the record alone on stdout, then the exit status as below
        print_json(checkpoints_record(out))
    if not out["audits"]:
        n_seen = out["n_files"] - len(out["bad"])
        if n_seen:
            # not "every readable checkpoint": a file left out may read and not fit the model
            left = f"; {len(out['bad'])} left out" if out["bad"] else ""
            # with --format json on stderr, as a line of progress: stdout holds the record
            print(f"nothing to do: every checkpoint of {args.checkpoints} not left out "
                  f"({n_seen} of {out['n_files']} files{left}) is already audited in series "
                  f"{out['series']} with the same request ({out['compared']})"
                  f"{copies_said(out)}",
                  file=sys.stderr if as_json else sys.stdout)
        return lines.left_out(out["bad"]) if out["bad"] else 0
    if as_json:
        # the record alone on stdout; a run's failed check against the model on stderr, as
        # bfd audit --format json says it (its lines were quiet)
        for one in out["audits"]:
            if one.get("run_id"):
                print_model_check_warning(store, one["run_id"])
        code = drift_exit(sum(flagged_count(one) for one in out["audits"]),
                          args.fail_on_drift, out["audits"], args.fail_if_not_compared)
        return lines.left_out(out["bad"]) if out["bad"] else code
    for one in out["audits"]:  # any not printed yet (none: each was, once audited)
        lines.print(one)
    n_flagged = lines.n_flagged
    n_seen = audited_before(out, len(out["audits"]))
    print(f"\n{len(out['audits'])} checkpoint(s) audited in series {out['series']}; "
          f"{n_seen} already audited with the same request{copies_said(out)}; store {store}")
    print_dashboard(out.get("dashboard"), store)
    for line in out.get("retention") or []:
        print(line)
    code = drift_exit(n_flagged, args.fail_on_drift, out["audits"], args.fail_if_not_compared)
    # exit 2 for the files left out, each named once: when known (any not yet: here)
    return lines.left_out(out["bad"]) if out["bad"] else code


class CheckpointLines:
    """A ``bfd.flows.progress`` listener that prints each checkpoint's lines (its file, its
    audit and flagged drift: ``print_audit``) once the flow ``audit-checkpoints`` reports that
    checkpoint's audit done (stage ``checkpoint``), and the line of a file left out (it does
    not load or fit the model: ``print_left_out``) once the flow reports it, not when every
    checkpoint is done. ``quiet`` (``--format json``): the left-out lines alone, on stderr."""

    def __init__(self, store: str, quiet: bool = False) -> None:
        self.store = store
        self.quiet = quiet
        self.printed: set[str] = set()
        self.told: set[str] = set()
        self.n_flagged = 0

    def __call__(self, stage: str, done: int, total: int, detail: dict) -> None:
        if stage != "checkpoint" or (self.quiet and "left_out" not in detail):
            return
        if "left_out" in detail:
            try:
                self.left_out([detail["left_out"]])
            except Exception:  # noqa: BLE001 - as below: the command names it at the end
                self.told.discard(detail["left_out"])
            return
        try:
            self.print(detail["audit"])
        except Exception:  # noqa: BLE001 - a display must not fail the flow (a closed pipe):
            # the command prints it again after the flow, where its error is its own
            self.printed.discard(detail["audit"]["audit_id"])

    def left_out(self, bad: Sequence[str]) -> int:
        """Names each file of ``bad`` left out that is not named yet (``print_left_out``);
        returns exit status 2."""
        new = [line for line in dict.fromkeys(bad) if line not in self.told]
        self.told.update(new)
        return print_left_out(new)

    def print(self, one: dict) -> None:
        """The lines of one checkpoint's audit (``one``: its summary), once."""
        if one["audit_id"] in self.printed:
            return
        self.printed.add(one["audit_id"])
        say(f"{one['checkpoint']}:")
        self.n_flagged += print_audit(one, self.store)
        if one.get("run_id"):
            print_model_check_warning(self.store, one["run_id"])


def unreadable_checkpoints(files) -> list[str]:
    """One line per file that is no readable checkpoint (``check_checkpoint``)."""
    from bfd.files import check_checkpoint

    bad = []
    for path in files:
        try:
            check_checkpoint(path)
        except (OSError, ValueError) as err:
            bad.append(" ".join(str(err).split()))
    return bad


def print_left_out(bad: Sequence[str], what: str = "left out: ") -> int:
    """Names each checkpoint left out (unreadable, or not loading or fitting the model), one
    line each on stderr; returns exit status 2 (the request named weights files it cannot
    use), also after the others were audited."""
    for line in bad:
        # not print: inside a flow run (log_prints) print goes to Prefect's logger
        sys.stderr.write(f"bfd: error: {what}{line}\n")
    return 2


SERVE_INTERRUPTED = "bfd: interrupted; serving stopped, with its temporary Prefect server"
SERVE_STOPPED = "bfd: interrupted; serving stopped"  # with a Prefect API of its own


def end_serve_on_interrupt() -> None:
    """``bfd serve`` as a process of its own: Ctrl-C or SIGTERM ends it at once, in one line
    (``cmd_serve``), exit 130 or 143, as the pipeline commands end (``bfd.cli_interrupt``).
    On Prefect's temporary server (no ``PREFECT_API_URL``) its runs and server end with it.
    Left to Prefect, the runner paused its schedules on shutdown through a server that the
    same Ctrl-C had already stopped: a page of ``httpx.ConnectError`` traceback, exit 1.
    With a configured API, Prefect's own shutdown left a run in progress ``Running`` there
    (Ctrl-C: the runner waited for it, or it ended unrecorded) or ``Cancelled`` as if a
    person had cancelled it (SIGTERM), with no line and exit 0 (trial 26, F5 and F6); now
    its runs are stopped and set ``Crashed`` there with the line, and the schedules paused,
    as Prefect's shutdown pauses them (``bfd.flows.serve.RunLines.end_runs``)."""
    from bfd.cli_interrupt import end_on_interrupt
    from bfd.flows.server import prefect_api_configured

    end_on_interrupt(message=SERVE_STOPPED if prefect_api_configured() else SERVE_INTERRUPTED)


def cmd_serve(args: argparse.Namespace) -> int:
    from bfd.cli_interrupt import say as on_interrupt
    from bfd.cli_interrupt import terminated
    from bfd.flows.serve import serve
    from bfd.flows.server import prefect_api_configured

    def watch(lines) -> None:  # Ctrl-C's line (end_serve_on_interrupt) names the runs stopped
        if not prefect_api_configured():
            on_interrupt(lambda: lines.interrupted_line(SERVE_INTERRUPTED))
            return

        def stopped() -> str:  # the runs stopped and Crashed in Prefect, with this line
            head = SERVE_STOPPED
            if terminated():
                head = head.replace("bfd: interrupted", "bfd: terminated (SIGTERM)", 1)
            return lines.end_runs(head)

        on_interrupt(stopped)

    serve(args.file, say, watch)  # its lines on stdout: serving, then each run's start and end
    return 0


def add_audit_parsers(sub) -> None:
    """The subcommands ``audit-checkpoints`` and ``serve``."""
    s = sub.add_parser("audit-checkpoints", help="audit every checkpoint of a folder or glob "
                       "not yet audited in its series, by the step in each file name "
                       "(1200, 1e4, 10k; none: by modification time, last), each with drift "
                       "against the series' latest comparable audit at or before its step")
    s.add_argument("checkpoints", help="a folder of checkpoint files or a glob")
    s.add_argument("--dry-run", action="store_true",
                   help="list the checkpoints it would audit (in step order), how many are "
                   "audited already and those left out; nothing is computed or recorded")
    cli._add_extract_options(s, weights=False)  # the weights are each checkpoint's
    cli.add_decompose_options(s)
    add_audit_options(s, CHECKPOINTS_SERIES, CHECKPOINTS_RECORD)
    s.set_defaults(fn=cmd_audit_checkpoints, weights="random", seed=0)

    s = sub.add_parser("serve", help="run the deployments of prefect.yaml on their schedules "
                       "in this process (no server or worker to set up); one line on stdout "
                       "when each run starts and when it ends")
    s.add_argument("--file", default="prefect.yaml",
                   help="the deployments file; its entrypoints are relative to its folder, "
                   "and an entrypoint bfd/... not found there is the installed bfd package's")
    s.set_defaults(fn=cmd_serve)

