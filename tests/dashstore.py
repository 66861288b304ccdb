"""Synthetic runs written straight into a store's tables (``bfd.storage.write_table``) and,
optionally, a results Dataset holding a planted positional factor: for the dashboard and
``bfd plot`` tests and bench/dashboard.py. No model, no extraction, no decomposition."""

from __future__ import annotations

import datetime as dt
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
) -> dict[str, np.ndarray]:
    """Writes one run's runs, layers, heads and modes tables; returns what was planted
    (``frac_pos`` per layer, ``energy`` per layer, head and block). ``intervals`` fills
    ``frac_pos_lo = frac_pos - 0.01`` and ``frac_pos_hi = frac_pos + 0.02``; ``layer_values``
    replaces a layers column's values (one per layer, at both sites); every column not
    planted is NULL."""
    rng = np.random.default_rng(seed)
    store = Store(root)
    created_at = created_at or dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    n_images = 16
    write_rows(store, "runs", model, run_id, [{
        "run_id": run_id, "model": model, "weights": weights, "weights_sha256": f"sha-{weights}",
        "images": "planted", "images_sha256": "img-sha", "n_images": n_images, "n_skipped": 0,
        "img_size": 16 * grid[0], "grid_h": grid[0], "grid_w": grid[1], "prefix_tokens": 1,
        "sites": "attn_in,resid", "layers": ",".join(map(str, range(depth))), "dtype": "float32",
        "created_at": created_at, "bfd_version": "test", "timm_version": "test",
        "torch_version": "test", "config_json": "{}", "status": status, "depth": depth,
        "num_heads": n_heads, "width": 8,
    }])
    frac_pos = rng.uniform(0.05, 0.6, size=depth)
    layer_rows = []
    for site, fp in (("attn_in", frac_pos), ("resid", frac_pos * 0.8)):
        for layer in range(depth):
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
    for layer in range(depth):
        for head in range(n_heads):
            f = frac[layer, head]
            scores = {"pp": f[0], "cp": f[1] + f[2], "cc": f[3]}
            head_rows.append({
                "layer": layer, "head": head,
                **{f"e_{b}": energy[layer, head, i] for i, b in enumerate(BLOCKS)},
                **{f"f_{b}": f[i] for i, b in enumerate(BLOCKS)},
                "head_type": TYPE_NAMES[max(scores, key=scores.get)], "eff_rank": 1 + 2 * f[3],
                "eff_rank_sigma": 2.0, "k90": 2, "mode_coupling": 0.1,
            })
            sigma = np.sort(rng.lognormal(0.0, 1.0, size=n_modes))[::-1]
            for mode in range(n_modes):
                e = energy[layer, head] * sigma[mode] ** 2 / (sigma**2).sum()
                mode_rows.append({
                    "layer": layer, "head": head, "mode": mode, "sigma": sigma[mode],
                    "alpha": rng.uniform(), "beta": rng.uniform(),
                    **{f"e_{b}": e[i] for i, b in enumerate(BLOCKS)},
                    "mode_type": BLOCKS[int(np.argmax(e))],
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
