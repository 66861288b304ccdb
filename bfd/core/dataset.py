"""Labeled form of a layer's results: an xarray Dataset with METHOD.md's names.

Dims: ``head, mode, block, token, dim`` (the flows add ``layer``). Variable names are a
contract with the Parquet tables and the dashboards: add, never rename.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from bfd.core.summary import BLOCKS, LayerResult

SCALARS = (
    "ss_total", "ss_pos", "ss_img", "ss_int", "frac_pos", "frac_img", "frac_int",
    "frac_content", "ss_identity_residual", "ortho_residual", "pos_split_half_r",
    "shuffle_frac_pos", "logit_residual",
)
PER_HEAD = ("head_type", "eff_rank", "eff_rank_sigma", "k90", "mode_coupling")
PER_MODE = ("sigma", "alpha", "beta", "mode_type")


def to_dataset(result: LayerResult, attrs: dict | None = None) -> xr.Dataset:
    """The results of one layer as an xarray Dataset (Stage 2 variables only if computed)."""
    T, d = result.pos.shape
    data: dict[str, tuple] = {name: ((), getattr(result, name)) for name in SCALARS}
    data["pos"] = (("token", "dim"), result.pos)
    data["mu"] = (("dim",), result.mu)
    coords: dict[str, object] = {"token": np.arange(T), "dim": np.arange(d)}
    if result.sigma is not None:
        H, dh = result.sigma.shape
        data["energy"] = (("head", "block"), result.energy)
        data["frac"] = (("head", "block"), result.frac)
        for name in PER_HEAD:
            data[name] = (("head",), _plain(getattr(result, name)))
        for name in PER_MODE:
            data[name] = (("head", "mode"), _plain(getattr(result, name)))
        data["mode_energy"] = (("head", "mode", "block"), result.mode_energy)
        coords |= {"head": np.arange(H), "mode": np.arange(dh), "block": list(BLOCKS)}
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update({"n_images": result.n_images, **(attrs or {})})
    return ds


def _plain(a: np.ndarray) -> np.ndarray:
    """Object arrays of labels become fixed-width strings (Zarr and Parquet friendly)."""
    return a.astype(str) if a.dtype == object else a
