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
CHECK_GROUP = "logit_check"
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
    qkv_bias: np.ndarray | None = None,
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
        qkv_bias: Optional ``(layer, 3·d_attn)`` biases of each block's ``attn.qkv``.
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
    if qkv_bias is not None:
        data["qkv_bias"] = (("layer", "qkv_row"), np.asarray(qkv_bias, dtype=np.float32))
    if pos_embed is not None:
        data["pos_embed"] = (("patch", "dim"), np.asarray(pos_embed, dtype=np.float32))
    ds = xr.Dataset(data, coords={"layer": np.asarray(layers, dtype=np.int64)})
    ds.attrs["num_heads"] = int(num_heads)
    # one chunk per layer: a decomposition task reads its own layer's weights only
    _write_unless_stored(store, _group(run_id), ds,
                         {"qkv_weight": {"chunks": (1, *qkv.shape[1:])}})


def _write_unless_stored(store: Store, group: str, ds: xr.Dataset, encoding: dict) -> None:
    """Write ``ds`` as the Zarr group ``group``, unless the same data are stored there: a
    resumed or repeated extraction then writes nothing (and works on a read-only store).
    The hash of the data is the group attribute ``bfd_tensors_sha256``, set last, so an
    interrupted write is never taken for a finished one."""
    digest = hashlib.sha256(repr(sorted(ds.attrs.items())).encode())
    for name in sorted(ds.variables):
        values = np.asarray(ds[name].values)
        digest.update(f"{name}{values.dtype}{values.shape}".encode())
        digest.update(values.astype(str).tobytes() if values.dtype == object
                      else np.ascontiguousarray(values).tobytes())
    try:
        stored = zarr.open_group(store.zarr_path, path=group, mode="r",
                                 zarr_format=3).attrs.get(_HASH_ATTR)
    except FileNotFoundError:
        stored = None
    if stored == digest.hexdigest():
        return
    ds.to_zarr(store.zarr_path, group=group, mode="w", zarr_format=3, consolidated=False,
               encoding=encoding)
    zarr.open_group(store.zarr_path, path=group, mode="r+",
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


def write_logit_check(
    store: Store,
    run_id: str,
    *,
    layers: list[int],
    image_index: list[int],
    image_ids: list[str],
    x: np.ndarray,
    q: np.ndarray,
    k: np.ndarray,
    scale: np.ndarray,
    attn_out_residual: np.ndarray,
) -> None:
    """Write the model's own q and k of a few images (nothing when they are stored), for the
    logit check of decomposition (docs/method.md, "Validation" 1; docs/checks.md).

    Args:
        store: The store.
        run_id: The run id.
        layers: Block indices, in the order of the first axis of every array.
        image_index: Global indices of the checked images; ``image_ids`` their ids.
        image_ids: See ``image_index``.
        x: ``(layer, image, token, dim)`` float32 input of ``attn.qkv``.
        q: ``(layer, image, head, token, head_dim)`` the model's queries, biases included.
        k: Same for the keys.
        scale: ``(layer,)`` the ``attn.scale`` the forward used.
        attn_out_residual: ``(layer,)`` relative residual of ``softmax(scale q kᵀ) v``
            against the model's own attention output.
    """
    dims_qk = ("layer", "check_image", "head", "token", "head_dim")
    ds = xr.Dataset(
        {"x": (("layer", "check_image", "token", "dim"), np.asarray(x, np.float32)),
         "q": (dims_qk, np.asarray(q, np.float32)),
         "k": (dims_qk, np.asarray(k, np.float32)),
         "scale": (("layer",), np.asarray(scale, np.float64)),
         "attn_out_residual": (("layer",), np.asarray(attn_out_residual, np.float64))},
        coords={"layer": np.asarray(layers, dtype=np.int64),
                "check_image": np.asarray(image_index, dtype=np.int64),
                "image_id": ("check_image", np.asarray(image_ids, dtype=object))},
    )
    per_layer = {name: {"chunks": (1, *ds[name].shape[1:])} for name in ("x", "q", "k")}
    _write_unless_stored(store, f"{validate_run_id(run_id)}/{CHECK_GROUP}", ds, per_layer)


def read_logit_check(store: Store, run_id: str, layer: int) -> xr.Dataset | None:
    """One layer's stored logit-check capture, loaded; None when the run has none (a run
    extracted before the check existed, or a layer it does not cover)."""
    try:
        ds = xr.open_zarr(store.zarr_path, group=f"{validate_run_id(run_id)}/{CHECK_GROUP}",
                          consolidated=False, zarr_format=3)
    except FileNotFoundError:
        return None
    if layer not in {int(v) for v in ds.layer.values}:
        return None
    return ds.sel(layer=layer).load()
