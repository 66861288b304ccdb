"""One-call in-memory API for notebooks and checks: ``bfd.analyze``."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from bfd.core import decompose_layer, head_maps, pos_embed_cosine, to_dataset
from bfd.core.anova import DEFAULT_GROUPS, as_chunk
from bfd.core.checks import require
from bfd.core.uncertainty import DEFAULT_CI_TARGET


def analyze(
    x: np.ndarray | torch.Tensor,
    qkv_weight: np.ndarray | torch.Tensor,
    num_heads: int,
    scale: float | None = None,
    prefix_tokens: int = 0,
    *,
    prefix: str = "exclude",
    chunk_size: int | None = None,
    compute_dtype: str = "float32",
    seed: int = 0,
    pos_embed: np.ndarray | None = None,
    resid0: np.ndarray | torch.Tensor | None = None,
    jackknife_groups: int = DEFAULT_GROUPS,
    ci_target: float = DEFAULT_CI_TARGET,
) -> xr.Dataset:
    """BFD of one layer's ``attn_in`` activations held in memory.

    Args:
        x: ``(N, T_total, d)`` activations at the input of ``attn.qkv``, prefix tokens first.
        qkv_weight: the ``(3·d_attn, d)`` weight of timm's ``attn.qkv``.
        num_heads: heads H of the attention.
        scale: logit scale, ``dh ** -0.5`` when None.
        prefix_tokens: leading CLS/register tokens; excluded from the factors by default.
        prefix: "exclude" (docs/method.md default) or "include" (each prefix index is a position).
        chunk_size: images per streaming chunk (all at once when None); results do not
            depend on it beyond float64 rounding.
        compute_dtype: "float32" (default, matmul speed) or "float64" for the pass-2
            projection; centering and every sum are float64 either way.
        seed: seed of the split-half and shuffle controls.
        pos_embed: optional patch rows ``(T_patch, d)`` of a learned absolute pos_embed, with
            ``resid0`` the ``(N, T_total, d)`` activations at the ``resid`` site of block 0, to
            report ``pos_embed_cos``.
        resid0: see ``pos_embed``.
        jackknife_groups: image groups G of the delete-a-group jackknife (image n in group
            ``n mod G``); 0 for no intervals. A multiple of 4, at least 8.
        ci_target: interval half-width the main shares should reach (``ci_halfwidth``,
            ``n_images_for_target``).

    Returns:
        Dataset with ``frac_pos, frac_img, frac_int``, ``energy/frac (head, block)``,
        ``head_type``, ``sigma/alpha/beta (head, mode)``, ``mode_energy``, ``mode_type``,
        ``eff_rank, eff_rank_sigma, k90, mode_coupling (head)``, ``pos (position, dim)``
        (``position``: the index on x's token axis of each position),
        ``mu (dim)``, the validation metrics, the chance-corrected shares
        (``frac_pos_adj``, ..., ``energy_adj``/``frac_adj (head, block)``), their 95 %
        intervals (``<share>_se/_lo/_hi``, per head ``f_<block>[_adj]_se/_lo/_hi``) and
        ``head_type_stability`` (docs/method.md).

    Raises:
        ValueError: for inputs of the wrong rank or shape, NaN/inf, a head count that does
            not divide the width, fewer than 2 images, or ``prefix_tokens >= T``.
    """
    xt = as_chunk(x, "x")
    N, T_total, d = xt.shape
    require(N >= 2, f"BFD needs at least 2 images; got x with N={N}")
    require(
        0 <= prefix_tokens < T_total,
        f"prefix_tokens must be in [0, {T_total}) for x with {T_total} tokens; "
        f"got {prefix_tokens}",
    )
    positions = T_total - prefix_tokens if prefix == "exclude" else T_total
    require(positions >= 2, f"BFD needs at least 2 positions; x has {T_total} tokens, of which "
            f"prefix_tokens={prefix_tokens} are excluded (prefix='exclude')")
    shape = tuple(np.shape(qkv_weight))
    # before head_maps, whose own checks would blame num_heads for a transposed weight
    require(
        len(shape) == 2 and shape[1] == d,
        f"qkv_weight must be (3*d_attn, d) with d={d}, x's width (timm's attn.qkv.weight, "
        f"rows q, k, v); got shape {shape}" + (" (transposed?)" if len(shape) == 2
                                               and shape[0] == d else ""),
    )
    maps = head_maps(qkv_weight, num_heads, scale)
    require(ci_target > 0, f"ci_target must be > 0; got {ci_target!r}")
    size = N if chunk_size is None else chunk_size
    require(size >= 1, f"chunk_size must be >= 1; got {chunk_size}")

    def chunks():
        return ((s, xt[s : s + size]) for s in range(0, N, size))

    result = decompose_layer(
        chunks, maps, prefix_tokens=prefix_tokens, prefix=prefix, seed=seed,
        compute_dtype=compute_dtype, groups=jackknife_groups, ci_target=ci_target,
    )
    attrs = {"prefix": prefix, "prefix_tokens": prefix_tokens, "seed": seed,
             "compute_dtype": compute_dtype, "site": "attn_in",
             "jackknife_groups": jackknife_groups, "ci_target": ci_target}
    ds = to_dataset(result, attrs, first_token=prefix_tokens if prefix == "exclude" else 0)
    if pos_embed is not None:
        require(resid0 is not None, "pos_embed was given without resid0; expected both")
        r0 = as_chunk(resid0, "resid0")[:, prefix_tokens:].to(torch.float64)
        pos0 = (r0.mean(0) - r0.mean((0, 1))).numpy()
        ds["pos_embed_cos"] = ((), pos_embed_cosine(pos0, pos_embed))
    return ds
