"""Drift between two audits of a series: every stored fraction per layer (but frac_content,
1 - frac_pos: ``LAYER_FRACTIONS``) and per head, and the head type, before and after, against
thresholds.

Read from the runs' results in the Zarr store (the same values as the ``layers`` and ``heads``
tables, through the same row builders), so drift does not depend on how tables are laid out.
Only what both runs hold is compared, and only when both runs are of one model and saw the
same images (``not_comparable``): layer ``l`` of one model is not layer ``l`` of another, and raw
shares change with the images and N with the model unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from bfd.storage import Store, model_label

# The layer shares drift compares. Not frac_content: it is frac_img + frac_int, exactly
# 1 - frac_pos (up to rounding), so its change is frac_pos's with the sign turned, and every
# frac_pos flag would flag it too (and count twice in n_flagged). Audits recorded before it
# was left out have its rows (frac_content, frac_content_resid), flagged and counted as any
# other.
LAYER_FRACTIONS: Final[tuple[str, ...]] = ("frac_pos", "frac_img", "frac_int")
HEAD_FRACTIONS: Final[tuple[str, ...]] = ("f_pp", "f_pc", "f_cp", "f_cc")
# Site suffix of a layer metric: attn_in (the heads' input) is the plain name, as in the
# layer_summary view (frac_pos, frac_pos_resid).
SITE_SUFFIX: Final[dict[str, str]] = {"attn_in": "", "resid": "_resid"}
# A layer share drift does not compare, with the metric whose drift is its own (its exact
# complement): what ``--drift-threshold`` says of it.
COMPLEMENT_OF: Final[dict[str, str]] = {
    "frac_content" + suffix: "frac_pos" + suffix for suffix in SITE_SUFFIX.values()}
# The ``runs`` columns that, with the model's name, say which model a run is of.
ARCHITECTURE: Final[tuple[str, ...]] = ("depth", "num_heads", "width")

DEFAULT_THRESHOLDS: Final[dict[str, Any]] = {
    # absolute change of a fraction (of energy or of sum of squares) that flags
    "fraction": 0.05,
    # a head whose type changed has delta 1: any threshold below 1 flags it, 1 never (above 1
    # is refused: bfd.flows.params.DriftThresholds)
    "head_type": 0.5,
    # per-metric overrides, e.g. {"frac_pos": 0.02, "f_cc_resid": ...}
    "metrics": {},
}


def drift_metrics() -> tuple[str, ...]:
    """Every metric a drift row can name (what ``--drift-threshold METRIC=VALUE`` accepts)."""
    layer = tuple(name + suffix for suffix in SITE_SUFFIX.values() for name in LAYER_FRACTIONS)
    return (*layer, *HEAD_FRACTIONS, "head_type")


def threshold_for(metric: str, thresholds: Mapping[str, Any]) -> float:
    """The threshold of one metric: its own override, else its kind's."""
    per_metric = thresholds.get("metrics") or {}
    if metric in per_metric:
        return float(per_metric[metric])
    kind = "head_type" if metric == "head_type" else "fraction"
    return float(thresholds.get(kind, DEFAULT_THRESHOLDS[kind]))


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _row(layer: int, head: int | None, metric: str, before: Any, after: Any,
         thresholds: Mapping[str, Any]) -> dict[str, Any]:
    before, after = _finite(before), _finite(after)
    delta = after - before if before is not None and after is not None else None
    threshold = threshold_for(metric, thresholds)
    return {"layer": layer, "head": head, "metric": metric, "before": before, "after": after,
            "delta": delta, "threshold": threshold,
            "flagged": delta is not None and abs(delta) > threshold}


def run_metrics(store: Store, run_id: str, group: str | None = None) -> tuple[dict, dict]:
    """``{(layer, metric): value}`` and ``{(layer, head): row}`` of a run's results: those
    published now, or those of its results ``group`` (one version, ``results_group_of``)."""
    return _metrics(*_result_rows(store, run_id, group))


def _result_rows(store: Store, run_id: str, group: str | None = None
                 ) -> tuple[list[dict], list[dict]]:
    """The ``layers`` and ``heads`` rows of a run's results (``run_metrics``'s ``group``)."""
    # here, not above: what imports this module to compare requests, not results
    # (audit-checkpoints with nothing to do) needs neither xarray nor Zarr (2 s)
    from bfd.storage import heads_rows, layers_rows, open_results
    from bfd.storage.results import open_results_group

    # many small variables, each read once
    ds = (open_results(store, run_id, dask=False) if group is None
          else open_results_group(store, group, dask=False))
    return (layers_rows(ds).to_pylist(),
            heads_rows(ds).to_pylist() if "head" in ds.dims else [])


def _metrics(layer_rows: list[dict], head_rows: list[dict]) -> tuple[dict, dict]:
    """``run_metrics`` of a run's ``layers`` and ``heads`` rows."""
    layers = {}
    for r in layer_rows:
        suffix = SITE_SUFFIX.get(r["site"], f"_{r['site']}")
        for name in LAYER_FRACTIONS:
            layers[(int(r["layer"]), name + suffix)] = r[name]
    heads = {(int(r["layer"]), int(r["head"])): r for r in head_rows}
    return layers, heads


def decompose_options_of(config_json: str | None) -> dict[str, Any]:
    """The decomposition options a ``runs`` row's ``config_json`` records ({} when none)."""
    try:
        options = json.loads(config_json or "{}").get("decompose", {})
    except (json.JSONDecodeError, AttributeError):
        return {}
    return options if isinstance(options, dict) else {}


def _prefix(options: Mapping[str, Any], prefix_tokens: int | None = None) -> str:
    """The positions of shares decomposed with ``options``: their ``--prefix``; for a run
    with no prefix token (SigLIP, ``class_token=False``) exclude, whatever the option (include
    is the same positions: as run_shapes spells it)."""
    return "exclude" if prefix_tokens == 0 else str(options.get("prefix") or "exclude")


def architecture_name(model: str | None) -> str:
    """A timm model name without its pretrained tag (``vit_b.augreg_in21k`` -> ``vit_b``): the
    tag chooses weights, as a checkpoint file does, not the architecture."""
    return str(model or "").split(".", 1)[0]


def model_args_of(config_json: str | None) -> dict[str, Any]:
    """The ``--model-arg`` options a ``runs`` row's ``config_json`` records ({} when none)."""
    try:
        request = json.loads(config_json or "{}").get("request") or {}
        args = (request.get("extra") or {}).get("model_args") or {}
    except (json.JSONDecodeError, AttributeError):
        return {}
    return args if isinstance(args, dict) else {}


def same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two ``runs`` rows are of one model, whatever its weights: the same architecture
    name (``architecture_name``) built with the same model arguments (``--model-arg``:
    ``model_args`` of the rows, none when absent), and the same depth, num_heads and width
    where both rows hold them (0 or NULL: a run published before these columns)."""
    if architecture_name(a.get("model")) != architecture_name(b.get("model")):
        return False
    if (a.get("model_args") or {}) != (b.get("model_args") or {}):
        return False
    return all(a.get(k) == b.get(k) for k in ARCHITECTURE if a.get(k) and b.get(k))


def _other_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """Which models two runs of ``same_model`` False are of, in words."""
    if architecture_name(a["model"]) != architecture_name(b["model"]) or (
            (a.get("model_args") or {}) != (b.get("model_args") or {})):
        return (f"{model_label(a['model'], a.get('model_args'))}, not "
                f"{model_label(b['model'], b.get('model_args'))}")

    def shape(r: Mapping[str, Any]) -> str:
        depth, heads, width = (r[k] or "?" for k in ARCHITECTURE)
        return f"depth {depth}, {heads} heads and width {width}"

    return f"{a['model']} of {shape(a)}, not of {shape(b)}"


def _run_inputs(store: Store, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """What each run saw: its model (name and ``ARCHITECTURE``), images_sha256, its decoded N,
    img_size and the prefix option of its published decomposition (``runs`` table)."""
    from bfd.storage import read_table

    wanted = set(run_ids)
    rows = read_table(store, "runs").to_pylist()
    return {r["run_id"]: _inputs_of(r)
            for r in rows if r["run_id"] in wanted and r["status"] == "complete"}


def _inputs_of(r: Mapping[str, Any]) -> dict[str, Any]:
    """What a ``runs`` row's run saw, as ``not_comparable`` compares it."""
    return {"model": r["model"], **{k: r.get(k) for k in ARCHITECTURE},
            "model_args": model_args_of(r.get("config_json")),
            "sha": r["images_sha256"], "img_size": r["img_size"],
            "n": (r["n_images"] or 0) - (r["n_skipped"] or 0),
            "prefix": _prefix(decompose_options_of(r.get("config_json")),
                              r.get("prefix_tokens")),
            "prefix_tokens": r.get("prefix_tokens")}


def _why_not(seen: Mapping[str, dict[str, Any]], run_before: str, run_after: str,
             seen_before: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``not_comparable`` of two runs given what each saw (``_run_inputs``): None, or why, in
    short (the clause ``compared_audit`` names a skipped audit by) and as its one line."""
    if run_before not in seen or run_after not in seen:
        return None
    a, b = seen[run_before], seen[run_after]
    if not same_model(a, b):
        return (f"another model ({_other_model(a, b)})",
                f"previous audit was of another model ({_other_model(a, b)}); not compared: "
                "layers and heads of two models are no change of one (`bfd query "
                "compare_models` compares models)")
    saw = (_prefix(seen_before, a.get("prefix_tokens")) if seen_before is not None
           else a["prefix"])
    prefix_a, prefix_b = a["prefix"], b["prefix"]
    if saw != prefix_b:
        return (f"shares over other positions (--prefix {saw}, not {prefix_b})",
                f"previous audit's shares were decomposed with --prefix {saw}, this audit's "
                f"with --prefix {prefix_b}; not compared: they are shares over other "
                "positions")
    if prefix_a != saw:
        return (f"its run {run_before} decomposed again with --prefix {prefix_a} since",
                f"previous audit's run {run_before} has been decomposed again with --prefix "
                f"{prefix_a} since that audit (it saw --prefix {saw}); not compared: "
                f"`bfd decompose {run_before} --prefix {saw}` restores what it saw")
    if run_before == run_after:
        return None
    if (a["sha"], a["n"], a["img_size"]) == (b["sha"], b["n"], b["img_size"]):
        return None
    what = ("other images" if a["sha"] != b["sha"] else
            "another decoded N" if a["n"] != b["n"] else "another img_size")
    changes = [f"{name} {x} -> {y}" for name, x, y in (
        ("images", (a["sha"] or "?")[:12], (b["sha"] or "?")[:12]), ("N", a["n"], b["n"]),
        ("img_size", a["img_size"], b["img_size"])) if x != y]
    return (f"{what} ({', '.join(changes)})",
            f"previous audit used {what} ({', '.join(changes)}); not compared: raw "
            "shares change with the images, not only with the model")


def not_comparable(store: Store, run_before: str, run_after: str,
                   seen_before: Mapping[str, Any] | None = None) -> str | None:
    """Why two runs' shares cannot be compared as drift of the model, in one line, or None.

    Runs of two models (``same_model``: another architecture name, depth, num_heads or
    width; other weights of one model, a checkpoint series, are compared) share layer and head
    indices, not layers: their differences are no change of a model. Raw shares move with the
    images and their number N (the noise of pos alone gives about ``frac_pos_chance``, of
    order 1/N: docs/method.md), so two runs that saw other images (images_sha256), decoded
    another N or used another img_size differ with the model unchanged; so do shares over
    other positions (the ``prefix`` option). The previous audit's shares are those of
    ``run_before``'s published decomposition only when that is still decomposed with the
    prefix option that audit saw (``seen_before``, its decomposition options; None: an audit
    that did not keep them, taken as the run's current ones). A run missing from the ``runs``
    table is compared as before.
    """
    why = _why_not(_run_inputs(store, (run_before, run_after)), run_before, run_after,
                   seen_before)
    return None if why is None else why[1]


def latest_comparable(store: Store, run_after: str,
                      earlier: Sequence[tuple[str, Mapping[str, Any] | None]],
                      after: Mapping[str, Any] | None = None,
                      ) -> tuple[int | None, list[tuple[str, str]]]:
    """The last of ``earlier`` (runs of earlier audits, each with the decomposition options
    its audit saw, oldest first) that ``run_after`` is comparable with (``not_comparable``
    None), by its index, or None when none is; and, latest first, why each one after it (or
    each one, when none is) is not: (short, line). The ``runs`` table is read once. A run
    missing from it is compared as ``not_comparable`` does only as the last of ``earlier``
    (the previous audit's, as before): past that one, only a run known comparable is.
    ``after``: the ``runs`` row ``run_after`` would have, for a run not computed yet (``bfd
    audit --dry-run``)."""
    seen = _run_inputs(store, (run_after, *(run for run, _ in earlier)))
    if after is not None:
        seen[run_after] = _inputs_of(after)
    skipped: list[tuple[str, str]] = []
    for i in range(len(earlier) - 1, -1, -1):
        run_before, seen_before = earlier[i]
        why = _why_not(seen, run_before, run_after, seen_before)
        if why is None and i < len(earlier) - 1 and run_before not in seen:
            why = (f"its run {run_before} not in the runs table",
                   f"previous audit's run {run_before} is not in the runs table")
        if why is None:
            return i, skipped
        skipped.append(why)
    return None, skipped


def drift_rows(store: Store, run_before: str, run_after: str,
               thresholds: Mapping[str, Any] | None = None,
               before_group: str | None = None) -> list[dict[str, Any]]:
    """One row per (layer, metric) and (layer, head, metric) that both runs hold.

    ``head_type`` rows have no before/after value (a type is not a number): their delta is 1
    when the type changed and 0 when not, and ``type_before``, ``type_after`` name the types
    (the audit's record of them: the runs may be decomposed again later).

    Args:
        store: The store.
        run_before: The previous audit's run.
        run_after: This audit's run.
        thresholds: See ``DEFAULT_THRESHOLDS``; missing keys take the defaults.
        before_group: The results version of ``run_before`` to read (default: its published
            one).

    Returns:
        Rows with the drift table's columns but the audit ids, layer metrics first.
    """
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    layers_a, heads_a = run_metrics(store, run_before, before_group)
    layers_b, heads_b = (layers_a, heads_a) if run_after == run_before else run_metrics(
        store, run_after)
    out = [_row(layer, None, metric, layers_a[key], layers_b[key], thresholds)
           for key in sorted(set(layers_a) & set(layers_b)) for layer, metric in [key]]
    for layer, head in sorted(set(heads_a) & set(heads_b)):
        a, b = heads_a[(layer, head)], heads_b[(layer, head)]
        out += [_row(layer, head, m, a[m], b[m], thresholds) for m in HEAD_FRACTIONS]
        changed = float(a["head_type"] != b["head_type"])
        row = _row(layer, head, "head_type", 0.0, changed, thresholds)
        out.append({**row, "before": None, "after": None, "type_before": a["head_type"],
                     "type_after": b["head_type"]})
    return out


def model_checks(layer_rows: list[dict]) -> dict[int, dict[str, Any]]:
    """Per layer of a run's ``layers`` rows, the check against the model at attn_in
    (``MODEL_CHECKS``: docs/checks.md), with its site and layer as those rows hold them
    (``bfd.core.model_check_limit.model_check_warning`` takes them); {} where the run has no
    attn_in site."""
    from bfd.core.model_check_limit import MODEL_CHECKS

    def value(v: Any) -> float | None:  # NaN: not computed; inf is kept (a failure)
        return None if v is None or v != v else float(v)

    return {int(r["layer"]): {"site": r["site"], "layer": int(r["layer"]),
                              **{name: value(r.get(name)) for name in MODEL_CHECKS}}
            for r in layer_rows if r["site"] == "attn_in"}


def layer_summary(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Per layer of a run: frac_pos at attn_in and resid, the energy-weighted head fractions,
    the head counts per type (the figures of the ``layer_summary`` view) and the check against
    the model (``model_checks``)."""
    layer_rows, head_rows = _result_rows(store, run_id)  # the results, read once
    layers, heads = _metrics(layer_rows, head_rows)
    checks = model_checks(layer_rows)
    out = []
    for layer in sorted({key[0] for key in layers} | {key[0] for key in heads}):
        row: dict[str, Any] = {"layer": layer, "frac_pos": _finite(layers.get((layer, "frac_pos"))),
                               "frac_pos_resid": _finite(layers.get((layer, "frac_pos_resid")))}
        mine = [r for (lay, _), r in heads.items() if lay == layer]
        energy = {b: sum(r[f"e_{b}"] for r in mine) for b in ("pp", "pc", "cp", "cc")}
        total = sum(energy.values())
        for b, e in energy.items():
            row[f"f_{b}"] = _finite(e / total) if total else None
        for short, name in (("pp", "position-position"), ("cp", "content-position"),
                            ("cc", "content-content")):
            row[f"n_heads_{short}"] = sum(r["head_type"] == name for r in mine)
        check = checks.get(layer, {})
        row |= {name: check.get(name) for name in ("model_logit_residual",
                                                   "model_attn_residual")}
        out.append(row)
    return out
