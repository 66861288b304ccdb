"""Synthetic runs written straight into a store's tables (``bfd.storage.write_table``) and,
optionally, a results Dataset holding a planted positional factor: for the dashboard and
``bfd plot`` tests and bench/dashboard.py. No model, no extraction, no decomposition."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import xarray as xr

from bfd.storage import TABLE_SCHEMAS, Store, write_results, write_table

BLOCKS = ("pp", "pc", "cp", "cc")
TYPE_NAMES = {"pp": "position-position", "cp": "content-position", "cc": "content-content"}


def write_rows(store: Store, table: str, model: str, run_id: str, rows: list[dict]) -> None:
    """``bfd.storage.write_table`` with every contract column of ``table`` in every row: the
    ones not planted here are undefined (NULL), so a column added to the contract needs no
    change here."""
    names = [n for n in TABLE_SCHEMAS[table].names if n not in ("run_id", "model")]
    write_table(store, table, model, run_id, [dict.fromkeys(names) | row for row in rows])


def planted_pos(grid: tuple[int, int], dim: int, layers: int, prefix: int = 1) -> np.ndarray:
    """pos (layer, position, dim): a row gradient along dim 0 (3x the variance) and a column
    gradient along dim 1, so PC1 is the row and PC2 the column coordinate of the grid."""
    h, w = grid
    rows, cols = np.divmod(np.arange(h * w), w)
    pos = np.zeros((layers, prefix + h * w, dim))
    pos[:, prefix:, 0] = 3.0 * (rows - rows.mean()) / rows.std()
    pos[:, prefix:, 1] = (cols - cols.mean()) / cols.std()
    pos[:, :prefix, 2] = 5.0  # prefix tokens, off the grid
    return pos


def head_shares(f: np.ndarray, energy: np.ndarray, adjusted: bool) -> dict[str, float]:
    """A head's shares ``f_*`` with intervals ``f - 0.01 .. f + 0.02`` and, ``adjusted``, its
    chance-corrected ``f_*_adj`` (of the energies ``write_synthetic_run`` plants then: ``e_pp``
    halved) with theirs."""
    e = energy * np.array([0.5, 1.0, 1.0, 1.0])
    out = {}
    for kind, values in (("", f), ("_adj", e / e.sum()))[:2 if adjusted else 1]:
        for b, v in zip(BLOCKS, values, strict=True):
            out |= {f"f_{b}{kind}": float(v), f"f_{b}{kind}_lo": float(v) - 0.01,
                    f"f_{b}{kind}_hi": float(v) + 0.02}
    return out


def write_synthetic_run(
    root: Path,
    run_id: str,
    *,
    model: str = "toy_vit",
    weights: str = "random",
    created_at: dt.datetime | None = None,
    depth: int = 3,
    n_heads: int = 2,
    n_modes: int = 4,
    grid: tuple[int, int] = (4, 5),
    seed: int = 0,
    status: str = "complete",
    with_pos: bool = False,
    intervals: bool = False,
    layer_values: dict[str, list[float]] | None = None,
    layers: tuple[int, ...] | None = None,
    n_images: int = 16,
    n_skipped: int = 0,
    width: int | None = 8,
    prefix: str | None = None,
    decompose: dict | None = None,
    images: str = "planted",
    images_sha256: str | None = "img-sha",
    img_size: int | None = None,
    sigmas: dict[int, list[float]] | None = None,
    adjusted_heads: bool = False,
    head_intervals: bool = False,
    method: int | None = None,
) -> dict[str, np.ndarray]:
    """Writes one run's runs, layers, heads and modes tables; returns what was planted
    (``frac_pos`` per layer, ``energy`` per layer, head and block). ``intervals`` fills
    ``frac_pos_lo = frac_pos - 0.01`` and ``frac_pos_hi = frac_pos + 0.02``; ``layer_values``
    replaces a layers column's values (one per layer, at both sites); ``layers`` stores those
    layers of the model only (``bfd extract --layers``; default: all ``depth``), the planted
    arrays staying indexed by layer; ``n_images`` the images it decoded, ``n_skipped`` more
    requested that did not decode (runs.n_images = n_images + n_skipped); ``width`` the
    model's (None: not recorded); ``prefix`` the decomposition's prefix option in its config
    (None: not said), ``decompose`` other options of it; ``images``, ``images_sha256`` and
    ``img_size`` its runs row's (default img_size: 16 per patch row of ``grid``); ``sigmas``
    the modes' sigma of a head (by head, ``n_modes`` values, in every stored layer);
    ``adjusted_heads`` gives the heads chance-corrected energies ``e_*_adj`` (``e_pp``
    halved, the others as they are), whence ``f_*_adj``; ``head_intervals`` gives each head's
    shares ``f_*`` (and, with ``adjusted_heads``, its ``f_*_adj``, stored per head) intervals
    ``f - 0.01 .. f + 0.02``; ``method`` its runs row's method version (None: no ``method``
    column, as a bfd before methods were recorded wrote: read as method 1,
    bfd.core.method); every column not planted is NULL."""
    rng = np.random.default_rng(seed)
    store = Store(root)
    created_at = created_at or dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    stored = tuple(range(depth)) if layers is None else tuple(layers)
    write_rows(store, "runs", model, run_id, [{
        "run_id": run_id, "model": model, "weights": weights, "weights_sha256": f"sha-{weights}",
        "images": images, "images_sha256": images_sha256, "n_images": n_images + n_skipped,
        "n_skipped": n_skipped,
        "img_size": 16 * grid[0] if img_size is None else img_size,
        "grid_h": grid[0], "grid_w": grid[1], "prefix_tokens": 1,
        "sites": "attn_in,resid", "layers": ",".join(map(str, stored)), "dtype": "float32",
        "created_at": created_at, "bfd_version": "test", "timm_version": "test",
        "torch_version": "test", "status": status, "depth": depth, "num_heads": n_heads,
        "width": width, **({} if method is None else {"method": method}),
        "config_json": json.dumps(
            {} if prefix is None and decompose is None
            else {"decompose": {**({} if prefix is None else {"prefix": prefix}),
                                **(decompose or {})}}),
    }])
    frac_pos = rng.uniform(0.05, 0.6, size=depth)
    layer_rows = []
    for site, fp in (("attn_in", frac_pos), ("resid", frac_pos * 0.8)):
        for layer in stored:
            layer_rows.append({
                "layer": layer, "site": site, "ss_total": 1.0, "frac_pos": fp[layer],
                "frac_img": (1 - fp[layer]) / 2, "frac_int": (1 - fp[layer]) / 2,
                "pos_split_half_r": 0.9 + 0.01 * layer, "pos_embed_cos": 0.7,
                "shuffle_frac_pos": 0.004, "ss_identity_residual": 1e-14,
                "ortho_residual": 1e-15, "frac_content": 1 - fp[layer], "logit_residual": 1e-7,
                "n_images": n_images,
                **({"frac_pos_lo": fp[layer] - 0.01, "frac_pos_hi": fp[layer] + 0.02}
                   if intervals else {}),
                **{key: values[layer] for key, values in (layer_values or {}).items()},
            })
    write_rows(store, "layers", model, run_id, layer_rows)
    energy = rng.lognormal(0.0, 1.0, size=(depth, n_heads, 4))
    frac = energy / energy.sum(axis=-1, keepdims=True)
    head_rows, mode_rows = [], []
    for layer in stored:
        for head in range(n_heads):
            f = frac[layer, head]
            scores = {"pp": f[0], "cp": f[1] + f[2], "cc": f[3]}
            head_rows.append({
                "layer": layer, "head": head,
                **{f"e_{b}": energy[layer, head, i] for i, b in enumerate(BLOCKS)},
                **{f"f_{b}": f[i] for i, b in enumerate(BLOCKS)},
                **({f"e_{b}_adj": energy[layer, head, i] * (0.5 if b == "pp" else 1.0)
                    for i, b in enumerate(BLOCKS)} if adjusted_heads else {}),
                **(head_shares(f, energy[layer, head], adjusted_heads)
                   if head_intervals else {}),
                "head_type": TYPE_NAMES[max(scores, key=scores.get)], "eff_rank": 1 + 2 * f[3],
                "eff_rank_sigma": 2.0, "k90": 2, "mode_coupling": 0.1,
            })
            sigma = np.sort(rng.lognormal(0.0, 1.0, size=n_modes))[::-1]
            if sigmas and head in sigmas:
                sigma = np.asarray(sigmas[head], dtype=float)
            for mode in range(n_modes):
                e = energy[layer, head] * sigma[mode] ** 2 / (sigma**2).sum()
                alpha, beta = rng.uniform(), rng.uniform()
                real = sigma[mode] > 0  # a mode of sigma 0: no alpha, beta or type, as published
                mode_rows.append({
                    "layer": layer, "head": head, "mode": mode, "sigma": sigma[mode],
                    "alpha": alpha if real else None, "beta": beta if real else None,
                    **{f"e_{b}": e[i] for i, b in enumerate(BLOCKS)},
                    "mode_type": BLOCKS[int(np.argmax(e))] if real else "undefined",
                })
    write_rows(store, "heads", model, run_id, head_rows)
    write_rows(store, "modes", model, run_id, mode_rows)
    if with_pos:
        # as decomposition stores it (docs/layout.md): per site, the positions' coordinate
        # is their token index; at resid the columns carry the larger variance, which
        # attn_in's view must not show
        pos = planted_pos(grid, 8, depth)
        resid = pos[..., [1, 0, *range(2, 8)]]
        ds = xr.Dataset(
            {"pos": (("site", "layer", "position", "dim"), np.stack([pos, resid]))},
            coords={"site": ["attn_in", "resid"], "layer": np.arange(depth),
                    "position": np.arange(pos.shape[1]), "dim": np.arange(8)},
        )
        write_results(store, run_id, ds)
    return {"frac_pos": frac_pos, "energy": energy}


AUDITS_SQL = (
    "CREATE OR REPLACE TABLE audits (audit_id VARCHAR, series VARCHAR, run_id VARCHAR,"
    " step BIGINT, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, trigger VARCHAR,"
    " flow_run_id VARCHAR, status VARCHAR, prev_audit_id VARCHAR, n_flagged BIGINT)"
)
DRIFT_SQL = (
    "CREATE OR REPLACE TABLE drift (audit_id VARCHAR, series VARCHAR, prev_audit_id VARCHAR,"
    " layer INTEGER, head INTEGER, metric VARCHAR, before DOUBLE, after DOUBLE, delta DOUBLE,"
    " threshold DOUBLE, flagged BOOLEAN)"
)


def catalog_with_audits(root: Path, copy: Path, audits: list[tuple], drift: list[tuple]):
    """A writable copy of the store's catalog snapshot with ``audits`` and ``drift`` tables
    (the columns the audit flows write, replacing any the catalog already has), for the
    pages that read them."""
    import shutil

    import duckdb

    from bfd.queries import refresh_catalog

    shutil.copyfile(refresh_catalog(root), copy)
    con = duckdb.connect(str(copy))
    con.execute(AUDITS_SQL)
    con.execute(DRIFT_SQL)
    con.executemany("INSERT INTO audits VALUES (" + ", ".join("?" * 11) + ")", audits)
    if drift:
        con.executemany("INSERT INTO drift VALUES (" + ", ".join("?" * 11) + ")", drift)
    return con


# Audits of reused runs (audit id, series, run, step, day started, status, the f_pp it saw or
# None: an audit written before audits kept their figures, filled by the catalog from
# run_summary): c-100, c-200 and c-500 are checkpoints at steps 100, 200 and 500; u-1 is
# never audited.
REUSED_AUDITS: tuple[tuple[str, str, str, int, int, str, float | None], ...] = (
    ("A1", "ck", "c-200", 200, 1, "complete", 0.21),
    ("A2", "ck", "c-500", 500, 2, "complete", 0.51),
    ("A3", "ck", "c-500", 500, 3, "complete", 0.52),  # nightly re-audit, unchanged model
    ("A4", "ck", "c-100", 100, 4, "complete", None),  # backfilled step, an old audit row
    ("A5", "ck", "c-200", 250, 5, "complete", 0.25),  # the step-200 model reused at 250
    ("A6", "other", "c-100", 100, 6, "complete", 0.11),
    ("A7", "th", "c-100", 1, 7, "complete", 0.12),  # c-100's latest audit
    ("A8", "ck", "c-500", 600, 8, "failed", None),
)
# Flagged drift (audit, metric): A2 frac_pos_resid only (frac_pos unflagged), A5 f_pp, A1
# head_type of layer 0 head 1 (position-position -> content-content from c-100 to c-200).
REUSED_DRIFT: tuple[tuple[str, str, bool], ...] = (
    ("A2", "frac_pos_resid", True), ("A2", "frac_pos", False), ("A5", "f_pp", True),
    ("A1", "head_type", True))
# frac_pos_resid_mean kept by an audit: A3 only (the others were written before audits kept
# it: NULL in their rows), so A2's flagged frac_pos_resid drift lands on a point with no value.
REUSED_RESID: dict[str, float] = {"A3": 0.61}


def head_counts(energy: np.ndarray) -> dict[str, int]:
    """``n_heads_*`` of a run that ``write_synthetic_run`` planted with these energies."""
    frac = energy / energy.sum(axis=-1, keepdims=True)
    kinds = np.argmax(np.stack([frac[..., 0], frac[..., 1] + frac[..., 2], frac[..., 3]]), axis=0)
    return {f"n_heads_{t}": int((kinds == i).sum()) for i, t in enumerate(("pp", "cp", "cc"))} | {
        "n_heads_undefined": 0}


def write_reused_audits(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """Runs c-100, c-200, c-500 and u-1 with the ``REUSED_AUDITS`` and ``REUSED_DRIFT``
    written through ``bfd.storage.write_audit``/``write_drift``; returns what each run
    planted. An audit that kept its figures keeps n_layers 3, n_heads 6, its f_pp and
    f_pc = 1 - f_pp, mean_f_pp = f_pp, its run's head counts per type, its ``REUSED_RESID``
    (the others NULL)."""
    from bfd.storage import write_audit, write_drift

    planted = {}
    for i, run_id in enumerate(("c-100", "c-200", "c-500", "u-1")):
        planted[run_id] = write_synthetic_run(
            root, run_id, weights="plain" if run_id == "u-1" else run_id, seed=10 + i,
            created_at=dt.datetime(2025, 1, 1 + i, tzinfo=dt.UTC))
    store = Store(root)
    for audit_id, series, run_id, step, day, status, f_pp in REUSED_AUDITS:
        start = dt.datetime(2025, 2, day, tzinfo=dt.UTC)
        seen = {} if f_pp is None else {"n_layers": 3, "n_heads": 6, "f_pp": f_pp,
                                        "f_pc": 1 - f_pp, "mean_f_pp": f_pp,
                                        "frac_pos_resid_mean": REUSED_RESID.get(audit_id),
                                        **head_counts(planted[run_id]["energy"])}
        write_audit(store, {
            "audit_id": audit_id, "series": series, "run_id": run_id, "step": step,
            "started_at": start, "finished_at": start + dt.timedelta(hours=1),
            "trigger": "schedule", "flow_run_id": None, "status": status,
            "prev_audit_id": None, "n_flagged": 1, **seen})
    for audit_id in dict.fromkeys(a for a, _, _ in REUSED_DRIFT):
        series = next(s for a, s, *_ in REUSED_AUDITS if a == audit_id)
        write_drift(store, series, audit_id, [
            {"audit_id": audit_id, "prev_audit_id": None, "layer": 0,
             "head": 0 if metric == "f_pp" else None, "metric": metric, "before": 0.1,
             "after": 0.3 if flagged else 0.1, "delta": 0.2 if flagged else 0.0,
             "threshold": 0.05, "flagged": flagged}
            | ({"head": 1, "before": None, "after": None, "delta": 1.0, "threshold": 0.5}
               if metric == "head_type" else {})
            for a, metric, flagged in REUSED_DRIFT if a == audit_id])
    return planted


# The new-user trial's series (audit id, run, images decoded, skipped, layers stored, f_cc it
# kept): the demo's N = 64, then 12 and 21 images of other folders, then 7 decoded of 8 with
# --layers 0,5: one model (toy_vit, depth 6) throughout, each audit's drift not compared with
# the one before (a drift_note). T5: the same 7 images, every layer: its drift is compared
# (per layer, the layers both hold) but its model-level figures average other layers than
# T4's (audit_history: comparable false, no drift_note).
TRIAL_AUDITS: tuple[tuple[str, str, int, int, tuple[int, ...] | None, float], ...] = (
    ("T1", "t-64", 64, 0, None, 0.956),
    ("T2", "t-12", 12, 0, None, 0.899),
    ("T3", "t-21", 21, 0, None, 0.928),
    ("T4", "t-7", 7, 1, (0, 5), 0.794),
    ("T5", "t-7all", 7, 1, None, 0.801),
)


def write_trial_series(root: Path, series: str, start: dt.datetime) -> list[dict]:
    """The ``TRIAL_AUDITS`` runs and their audits in ``series``, one a day from ``start``
    (step: its start in Unix seconds, an audit's default), each chained to the one before
    with the drift_note the audit task writes (``bfd.tasks.drift.not_comparable``) and 0
    flagged; returns the audit rows written."""
    from bfd.storage import write_audit
    from bfd.tasks.drift import not_comparable

    store = Store(root)
    rows: list[dict] = []
    for i, (audit_id, run_id, n, skipped, layers, f_cc) in enumerate(TRIAL_AUDITS):
        write_synthetic_run(root, run_id, depth=6, seed=20 + i, n_images=n, layers=layers,
                            n_skipped=skipped, created_at=start + dt.timedelta(days=i, minutes=-5))
        began = start + dt.timedelta(days=i)
        prev = rows[-1] if rows else None
        row = {"audit_id": audit_id, "series": series, "run_id": run_id,
               "step": int(began.timestamp()), "started_at": began,
               "finished_at": began + dt.timedelta(minutes=2), "trigger": "manual",
               "flow_run_id": None, "status": "complete",
               "prev_audit_id": prev and prev["audit_id"], "n_flagged": 0,
               "drift_note": prev and not_comparable(store, prev["run_id"], run_id),
               "n_layers": len(layers or range(6)), "n_heads": 2 * len(layers or range(6)),
               "f_cc": f_cc, "f_pp": 1 - f_cc}
        write_audit(store, row)
        rows.append(row)
    return rows


def write_results_of_tables(root: Path, run_id: str,
                            shift: dict[tuple[str, int, str], float] | None = None) -> xr.Dataset:
    """Writes a run's results Dataset from its ``layers`` and ``heads`` tables (as
    ``write_synthetic_run`` planted them), the variables drift reads (``bfd.tasks.drift
    .run_metrics``: the layer fractions per site, the head energies, fractions and types), so
    that drift between two such runs is computed without a model. ``shift``: (site, layer,
    variable) -> an amount added to that one value of the results (planted drift; the tables
    keep the value unshifted). Returns the Dataset written."""
    from bfd.storage import read_run_table

    store = Store(root)
    layers = read_run_table(store, "layers", run_id).to_pylist()
    heads = read_run_table(store, "heads", run_id).to_pylist()
    sites = sorted({r["site"] for r in layers})
    ids = sorted({r["layer"] for r in layers})
    n_heads = max(r["head"] for r in heads) + 1
    fractions = ("frac_pos", "frac_img", "frac_int", "frac_content")
    values = {name: np.full((len(sites), len(ids)), np.nan) for name in fractions}
    for r in layers:
        for name in fractions:
            values[name][sites.index(r["site"]), ids.index(r["layer"])] = r[name]
    for (site, layer, name), amount in (shift or {}).items():
        values[name][sites.index(site), ids.index(layer)] += amount
    energy = np.zeros((len(ids), n_heads, 4))
    frac = np.zeros((len(ids), n_heads, 4))
    per_head = {k: np.zeros((len(ids), n_heads)) for k in ("eff_rank", "eff_rank_sigma",
                                                            "k90", "mode_coupling")}
    types = np.full((len(ids), n_heads), "undefined", dtype=object)
    for r in heads:
        at = (ids.index(r["layer"]), r["head"])
        energy[at] = [r[f"e_{b}"] for b in BLOCKS]
        frac[at] = [r[f"f_{b}"] for b in BLOCKS]
        types[at] = r["head_type"]
        for k in per_head:
            per_head[k][at] = r[k]
    ds = xr.Dataset(
        {**{name: (("site", "layer"), v) for name, v in values.items()},
         "energy": (("layer", "head", "block"), energy),
         "frac": (("layer", "head", "block"), frac),
         "head_type": (("layer", "head"), types.astype(str)),
         **{k: (("layer", "head"), v) for k, v in per_head.items()}},
        coords={"site": sites, "layer": ids, "head": np.arange(n_heads), "block": list(BLOCKS)})
    write_results(store, run_id, ds)
    return ds


# A nightly series with ad-hoc audits of other N between (tests/test_drift_series.py): (audit
# name, run, N it decoded, seed of its planted tables, planted drift of its results). A (N 16),
# B (N 8, ad hoc), C (N 16: the next night, its tables A's, the frac_pos of layer 0 of its
# results planted 0.2 higher than A's), D (N 4: the first of its N), E (N 8 again: B's run),
# F (N 16, another model state: other head types). Audit k is at step k, started on day k of
# NIGHTLY_START.
NIGHTLY_AUDITS: tuple[tuple[str, str, int, int, dict | None], ...] = (
    ("A", "r-a", 16, 1, None), ("B", "r-b", 8, 2, None),
    ("C", "r-c", 16, 1, {("attn_in", 0, "frac_pos"): 0.2}),
    ("D", "r-d", 4, 3, None), ("E", "r-b", 8, 2, None), ("F", "r-f", 16, 9, None))
NIGHTLY_START = dt.datetime(2026, 11, 1, 3, 0, tzinfo=dt.UTC)


def write_nightly_series(root: Path, series: str = "nightly") -> dict[str, dict]:
    """The audits of ``NIGHTLY_AUDITS``, each recorded as the flow records one of an already
    computed run (``bfd.tasks.audits.audit_row`` and ``drift_since_previous``: which earlier
    audit it compares with, its drift rows), its run planted (``write_synthetic_run``, results
    from its tables: ``write_results_of_tables``). Returns each audit's row by name (with
    what is said, not stored: ``skipped``, ``prev_step``)."""
    from bfd.queries.seen import run_seen
    from bfd.tasks.audits import audit_row, drift_since_previous
    from bfd.tasks.drift import DEFAULT_THRESHOLDS

    rows: dict[str, dict] = {}
    for step, (name, run_id, n, seed, shift) in enumerate(NIGHTLY_AUDITS, 1):
        began = NIGHTLY_START + dt.timedelta(days=step)
        if run_id not in {r["run_id"] for r in rows.values()}:
            write_synthetic_run(root, run_id, weights=f"night-{run_id}", seed=seed,
                                n_images=n, created_at=began)
            write_results_of_tables(root, run_id, shift)
        with audit_row(Store(root), series, step, "test", None, began) as row:
            drift_since_previous(Store(root), row, run_id, DEFAULT_THRESHOLDS,
                                 run_seen(root, run_id))
        rows[name] = row
    return rows
