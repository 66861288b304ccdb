"""Labeled form of a layer's results: an xarray Dataset with docs/method.md's names.

Dims: ``head, mode, block, position, dim`` (the flows add ``layer`` and ``site``). Variable
names are a contract with the Parquet tables and the dashboards: add, never rename.

``position`` is not the activations' ``token`` dimension: it holds only the tokens that count as
positions (the patches, unless ``prefix="include"``), and its coordinate is their index on
``token``. So ``xr.align`` of results and activations never pairs a patch with the CLS token,
and a run's Zarr group (activations, with the results as its subgroup) opens as one
``xarray.DataTree``; ``acts.sel(token=results.position.values)`` selects the matching tokens.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from bfd.core.summary import BLOCKS, LayerResult
from bfd.core.uncertainty import HEAD_INTERVALS, LAYER_INTERVALS

SCALARS = (
    "ss_total", "ss_pos", "ss_img", "ss_int", "frac_pos", "frac_img", "frac_int",
    "frac_content", "ss_identity_residual", "ortho_residual", "pos_split_half_r",
    "shuffle_frac_pos", "logit_residual",
)
PER_HEAD = ("head_type", "eff_rank", "eff_rank_sigma", "k90", "mode_coupling")
# docs/method.md, "Chance-corrected shares" and "Uncertainty": per (site, layer) ...
STATISTICS = (
    "frac_pos_adj", "frac_img_adj", "frac_int_adj", "frac_content_adj", "frac_pos_chance",
    *LAYER_INTERVALS, "ci_halfwidth", "n_images_for_target",
)
# ... and per head, besides energy_adj and frac_adj (head, block)
HEAD_STATISTICS = (*HEAD_INTERVALS, "head_type_stability")
PER_MODE = ("sigma", "alpha", "beta", "mode_type")


def to_dataset(
    result: LayerResult, attrs: dict | None = None, first_token: int = 0,
    extra: dict[str, tuple] | None = None,
) -> xr.Dataset:
    """The results of one layer as an xarray Dataset (Stage 2 variables only if computed).

    Args:
        result: the layer's results.
        attrs: attributes of the Dataset.
        first_token: index on the activations' ``token`` dimension of the first position
            (the number of prefix tokens when they are excluded, else 0).
        extra: more variables, ``name: (dims, values)``, after the others (one Dataset
            built at once: each later assignment merged and copied all of its variables).
    """
    T, d = result.pos.shape
    data: dict[str, tuple] = {name: ((), getattr(result, name)) for name in SCALARS}
    data["pos"] = (("position", "dim"), result.pos)
    data["mu"] = (("dim",), result.mu)
    stats = result.statistics or {}
    for name in STATISTICS:
        data[name] = ((), float(stats.get(name, np.nan)))
    coords: dict[str, object] = {"position": first_token + np.arange(T), "dim": np.arange(d)}
    if result.sigma is not None:
        H, dh = result.sigma.shape
        data["energy"] = (("head", "block"), result.energy)
        data["frac"] = (("head", "block"), result.frac)
        for name in PER_HEAD:
            data[name] = (("head",), _plain(getattr(result, name)))
        for name in PER_MODE:
            data[name] = (("head", "mode"), _plain(getattr(result, name)))
        data["mode_energy"] = (("head", "mode", "block"), result.mode_energy)
        for name in ("energy_adj", "frac_adj"):
            data[name] = (("head", "block"), stats.get(name, np.full((H, 4), np.nan)))
        for name in HEAD_STATISTICS:
            data[name] = (("head",), stats.get(name, np.full(H, np.nan)))
        coords |= {"head": np.arange(H), "mode": np.arange(dh), "block": list(BLOCKS)}
    data |= extra or {}
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update({"n_images": result.n_images, **(attrs or {})})
    return ds


def _plain(a: np.ndarray) -> np.ndarray:
    """Object arrays of labels become fixed-width strings (Zarr and Parquet friendly)."""
    return a.astype(str) if a.dtype == object else a
