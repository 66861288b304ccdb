"""A run's results Dataset in long form: the rows of the ``layers``, ``heads`` and ``modes``
tables (same names as the Dataset, docs/layout.md)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xarray as xr

BLOCK_COLUMNS = ("pp", "pc", "cp", "cc")
LAYER_COLUMNS = (
    "ss_total", "frac_pos", "frac_img", "frac_int", "pos_split_half_r", "pos_embed_cos",
    "shuffle_frac_pos", "ss_identity_residual", "ortho_residual", "frac_content",
    "logit_residual", "model_logit_residual", "model_attn_residual",
)
HEAD_COLUMNS = ("head_type", "eff_rank", "eff_rank_sigma", "k90", "mode_coupling")
# absent from results decomposed before the logit check existed: NaN there
HEAD_CHECK_COLUMNS = ("bias_key_share", "bias_key_pos_share", "bias_key_con_share")
_STATS = ("se", "lo", "hi")
_LAYER_SHARES = ("frac_pos", "frac_img", "frac_int", "frac_content")
# docs/method.md, "Chance-corrected shares", "Uncertainty" and "Sample-size adequacy"
LAYER_STAT_COLUMNS = (
    "frac_pos_adj", "frac_img_adj", "frac_int_adj", "frac_content_adj", "frac_pos_chance",
    *(f"{s}{a}_{k}" for a in ("", "_adj") for s in _LAYER_SHARES for k in _STATS),
    "ci_halfwidth", "n_images_for_target",
)
HEAD_STAT_COLUMNS = (
    *(f"f_{b}{a}_{k}" for a in ("", "_adj") for b in BLOCK_COLUMNS for k in _STATS),
    "head_type_stability",
)


def _flat(da: xr.DataArray, dims: tuple[str, ...]) -> np.ndarray:
    return da.transpose(*dims).values.reshape(-1)


def _grid(ds: xr.Dataset, dims: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Index columns of the full cartesian product of ``dims``, in C order."""
    mesh = np.meshgrid(*(ds[d].values for d in dims), indexing="ij")
    return {d: m.reshape(-1) for d, m in zip(dims, mesh, strict=True)}


def layers_rows(ds: xr.Dataset) -> pa.Table:
    """One row per (site, layer): Stage 1 fractions and the validation metrics."""
    dims = ("site", "layer")
    cols = _grid(ds, dims)
    for name in LAYER_COLUMNS:
        cols[name] = _optional(ds, name, dims)
    cols["n_images"] = np.full(len(cols["layer"]), int(ds.attrs.get("n_images", 0)))
    for name in LAYER_STAT_COLUMNS:
        cols[name] = _optional(ds, name, dims)
    cols["ci_target"] = np.full(len(cols["layer"]), float(ds.attrs.get("ci_target", np.nan)))
    return pa.table({k: np.asarray(v) for k, v in cols.items()})


def heads_rows(ds: xr.Dataset) -> pa.Table:
    """One row per (layer, head): block energies, fractions, type and spectrum richness."""
    dims = ("layer", "head")
    cols = _grid(ds, dims)
    for b in BLOCK_COLUMNS:
        cols[f"e_{b}"] = _flat(ds.energy.sel(block=b), dims)
    for b in BLOCK_COLUMNS:
        cols[f"f_{b}"] = _flat(ds.frac.sel(block=b), dims)
    for name in HEAD_COLUMNS:
        cols[name] = _flat(ds[name], dims)
    for name in HEAD_CHECK_COLUMNS:
        cols[name] = _optional(ds, name, dims)
    # through Python strings: a type read back from Zarr is a variable-width string (numpy
    # StringDType), which numpy does not cast to a fixed-width one
    cols["head_type"] = np.asarray(cols["head_type"].tolist(), dtype=str)
    for b in BLOCK_COLUMNS:
        cols[f"e_{b}_adj"] = _optional(ds, "energy_adj", dims, b)
    for b in BLOCK_COLUMNS:
        cols[f"f_{b}_adj"] = _optional(ds, "frac_adj", dims, b)
    for name in HEAD_STAT_COLUMNS:
        cols[name] = _optional(ds, name, dims)
    # an undefined head has no mode count (the core marks it 0): NULL, not a number
    cols["k90"] = pa.array(cols["k90"].astype(np.int32), mask=cols["head_type"] == "undefined")
    return pa.table(cols)


def _optional(ds: xr.Dataset, name: str, dims: tuple[str, ...], block: str | None = None):
    """A variable's column, NaN where the results predate it."""
    if name not in ds:
        return np.full(int(np.prod([ds.sizes[d] for d in dims])), np.nan)
    return _flat(ds[name] if block is None else ds[name].sel(block=block), dims)


def modes_rows(ds: xr.Dataset) -> pa.Table:
    """One row per (layer, head, mode): sigma, side loadings, block energies and type."""
    dims = ("layer", "head", "mode")
    cols = _grid(ds, dims)
    for name in ("sigma", "alpha", "beta"):
        cols[name] = _flat(ds[name], dims)
    for b in BLOCK_COLUMNS:
        cols[f"e_{b}"] = _flat(ds.mode_energy.sel(block=b), dims)
    cols["mode_type"] = _flat(ds.mode_type, dims).astype(str)
    return pa.table(cols)
