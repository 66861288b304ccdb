"""The model tensors a decomposition needs, stored beside a run's activations.

Decomposition reads the per-layer ``attn.qkv`` weights and scales (and the learned
``pos_embed`` rows for validation) from the store, so it never needs the model, its weights
file or the hub: a run can be decomposed on any machine that can read the store.
"""

from __future__ import annotations

import hashlib

import numpy as np
import xarray as xr
import zarr

from .paths import Store, validate_run_id

MODEL_GROUP = "model"
_HASH_ATTR = "bfd_tensors_sha256"


def _group(run_id: str) -> str:
    return f"{validate_run_id(run_id)}/{MODEL_GROUP}"


def write_model_tensors(
    store: Store,
    run_id: str,
    *,
    layers: list[int],
    qkv_weight: np.ndarray,
    attn_scale: np.ndarray,
    num_heads: int,
    pos_embed: np.ndarray | None = None,
) -> None:
    """Write the model tensors of a run; nothing is written when the same tensors are stored
    (a resumed or repeated extraction then needs no write access to them).

    Args:
        store: The store.
        run_id: The run id.
        layers: Block indices, in the order of the first axis of ``qkv_weight``.
        qkv_weight: ``(layer, 3·d_attn, d)`` weights of each block's ``attn.qkv``.
        attn_scale: ``(layer,)`` each block's ``attn.scale``.
        num_heads: Heads per block.
        pos_embed: Optional ``(patch, d)`` patch rows of a learned absolute pos_embed.
    """
    qkv = np.asarray(qkv_weight, dtype=np.float32)
    if qkv.ndim != 3 or qkv.shape[0] != len(layers):
        raise ValueError(
            f"qkv_weight must be (layer, 3*d_attn, d) with {len(layers)} layers; "
            f"got shape {qkv.shape}"
        )
    data = {
        "qkv_weight": (("layer", "qkv_row", "dim"), qkv),
        "attn_scale": (("layer",), np.asarray(attn_scale, dtype=np.float64)),
    }
    if pos_embed is not None:
        data["pos_embed"] = (("patch", "dim"), np.asarray(pos_embed, dtype=np.float32))
    ds = xr.Dataset(data, coords={"layer": np.asarray(layers, dtype=np.int64)})
    digest = hashlib.sha256(repr((list(layers), int(num_heads))).encode())
    for name in sorted(data):
        digest.update(name.encode() + np.ascontiguousarray(data[name][1]).tobytes())
    try:
        stored = zarr.open_group(store.zarr_path, path=_group(run_id), mode="r",
                                 zarr_format=3).attrs.get(_HASH_ATTR)
    except FileNotFoundError:
        stored = None
    if stored == digest.hexdigest():
        return
    ds.attrs["num_heads"] = int(num_heads)
    # one chunk per layer: a decomposition task reads its own layer's weights only
    ds.to_zarr(store.zarr_path, group=_group(run_id), mode="w", zarr_format=3,
               consolidated=False, encoding={"qkv_weight": {"chunks": (1, *qkv.shape[1:])}})
    # set last, like the activation template's marker: an interrupted write is not trusted
    zarr.open_group(store.zarr_path, path=_group(run_id), mode="r+",
                    zarr_format=3).attrs[_HASH_ATTR] = digest.hexdigest()


def read_model_tensors(store: Store, run_id: str, layer: int | None = None) -> xr.Dataset:
    """The model tensors of a run, loaded: every layer's, or one layer's.

    Args:
        store: The store.
        run_id: The run id.
        layer: When given, only this block's ``qkv_weight`` and ``attn_scale`` (and
            ``pos_embed``) are read, with a ``layer`` dim of length 1; all layers of a large
            model weigh hundreds of MB.

    Raises:
        FileNotFoundError: If the run has none (its extraction never started).
        ValueError: If ``layer`` is not one of the run's layers.
    """
    try:
        ds = xr.open_zarr(store.zarr_path, group=_group(run_id), consolidated=False,
                          zarr_format=3)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"run {run_id} has no model tensors in {store.zarr_path}; extract it first"
        ) from e
    if layer is not None:
        stored = [int(v) for v in ds.layer.values]
        if layer not in stored:
            raise ValueError(f"layer {layer} is not among run {run_id}'s layers {stored}")
        ds = ds.sel(layer=[layer])
    return ds.load()
