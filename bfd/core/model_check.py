"""The logit check against the model itself, and the size of the key-side bias term
(docs/method.md, "Stage 2" bias terms and "Validation" 1; docs/checks.md).

The 9-block reconstruction of ``content.logit_residual`` is an arithmetic identity (content is
defined as ``x − mu − pos``), so it only guards rounding. This check can fail: on a few images
whose own queries and keys were captured from the model at extraction, the head maps built from
the stored ``qkv`` weight must give back the model's pre-softmax logits,

    s_model q_i · k_j  =  s (x_i A + b_q)(x_j B + b_k)ᵀ
                       =  x_i M xⱼᵀ + s x_i A b_k + s b_qᵀ Bᵀ x_j + s b_q · b_k,

so the bilinear part ``x M xᵀ`` equals the model's logits minus the bias terms. Wrong rows of
``qkv``, a wrong scale or a wrong head split break it by far more than rounding.

The key-side term ``s b_qᵀ B_hᵀ x_j`` varies over keys and so moves attention; BFD leaves it out
of M. Its share of the softmax-relevant logit energy (each query row centred over keys, as
softmax ignores a constant per row) is reported per head, split by the factor of ``x_j``:
centred over keys, ``mu`` drops out and ``w·x_j`` (``w = s B_h b_q``) becomes ``w·pos_j +
w·(c_j − mean_j c_j)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bfd.core.anova import Means, select_tokens
from bfd.core.checks import require
from bfd.core.heads import HeadMaps


@dataclass(frozen=True)
class ModelLogitCheck:
    """Result of the logit check of one layer.

    Attributes:
        residual: largest over heads of ``||L_model − s (xA + b_q)(xB + b_k)ᵀ||_F /
            ||s (xA)(xB)ᵀ||_F`` over the checked images, all tokens.
        bias_key_share: ``(H,)`` energy of the key-side bias term (centred over keys) over the
            energy of the model's logits (each query row centred over keys), on the checked
            images and the decomposition's tokens. An energy ratio, not a fraction of a sum:
            where the rest of the logit cancels part of the key-side term it exceeds 1.
        bias_key_pos_share: ``(H,)`` the same for its position part ``w·pos_j``.
        bias_key_con_share: ``(H,)`` the same for its content part ``w·c_j`` (centred); with
            the position part it sums to ``bias_key_share`` up to their cross term, which is
            zero only summed over all images.
    """

    residual: float
    bias_key_share: np.ndarray
    bias_key_pos_share: np.ndarray
    bias_key_con_share: np.ndarray


def _ratio(num: torch.Tensor, den: torch.Tensor) -> np.ndarray:
    num, den = num.cpu().numpy(), den.cpu().numpy()
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def model_logit_check(
    x: np.ndarray | torch.Tensor,
    q: np.ndarray | torch.Tensor,
    k: np.ndarray | torch.Tensor,
    model_scale: float,
    maps: HeadMaps,
    means: Means,
    prefix_tokens: int = 0,
    prefix: str = "exclude",
) -> ModelLogitCheck:
    """Check the head maps against the model's own queries and keys of a few images.

    Args:
        x: ``(K, T_total, d)`` inputs of ``attn.qkv`` of the checked images.
        q: ``(K, H, T_total, dh)`` the model's queries of them (its head split, biases in).
        k: ``(K, H, T_total, dh)`` the model's keys.
        model_scale: the logit scale the model applied (checked at extraction against its
            attention output; independent of ``maps.scale``).
        maps: the head maps under test (with their biases).
        means: the layer's pass-1 means (``mu``, ``pos``) for the position/content split.
        prefix_tokens: leading CLS/register tokens of ``x``.
        prefix: "exclude" or "include", as the decomposition.
    """
    x, q, k = (torch.as_tensor(a).to(torch.float64) for a in (x, q, k))
    K, T_total, d = x.shape
    H, dh = maps.num_heads, maps.head_dim
    require(d == maps.dim, f"checked x has width {d} but qkv expects d={maps.dim}")
    require(
        tuple(q.shape) == tuple(k.shape) == (K, H, T_total, dh),
        f"model q/k have shapes {tuple(q.shape)}/{tuple(k.shape)}; the head maps expect "
        f"{(K, H, T_total, dh)}",
    )
    A, B = torch.from_numpy(maps.A), torch.from_numpy(maps.B)
    zero = np.zeros((H, dh))
    bq = torch.from_numpy(zero if maps.bias_q is None else maps.bias_q)
    bk = torch.from_numpy(zero if maps.bias_k is None else maps.bias_k)
    s = maps.scale
    xa = torch.einsum("ntd,hdk->nhtk", x, A)
    xb = torch.einsum("ntd,hdk->nhtk", x, B)
    model = model_scale * q @ k.transpose(-1, -2)
    ours = s * (xa + bq[:, None]) @ (xb + bk[:, None]).transpose(-1, -2)
    bilinear = s * xa @ xb.transpose(-1, -2)
    per_head = _ratio(torch.linalg.vector_norm(model - ours, dim=(0, 2, 3)),
                      torch.linalg.vector_norm(bilinear, dim=(0, 2, 3)))
    residual = float(np.nanmax(per_head)) if np.isfinite(per_head).any() else float("nan")

    # softmax-relevant energy on the decomposition's tokens, each query row centred over keys
    sel = slice(prefix_tokens, None) if prefix == "exclude" else slice(None)
    logits = model[..., sel, sel]
    centred = logits - logits.mean(-1, keepdim=True)
    total = (centred**2).sum((0, 2, 3))
    xs = select_tokens(x, prefix_tokens, prefix)
    pos = torch.from_numpy(means.pos)
    require(xs.shape[1:] == pos.shape, f"checked tokens {tuple(xs.shape[1:])} differ from pos "
            f"{tuple(pos.shape)}")
    w = s * torch.einsum("hdk,hk->hd", B, bq)
    k_pos = pos @ w.T
    k_con = (xs - torch.from_numpy(means.mu) - pos) @ w.T
    k_pos = k_pos - k_pos.mean(0)
    k_con = k_con - k_con.mean(1, keepdim=True)
    rows = xs.shape[1]  # every query row carries the same centred key-side term
    return ModelLogitCheck(
        residual=residual,
        bias_key_share=_ratio(rows * ((k_pos + k_con) ** 2).sum((0, 1)), total),
        bias_key_pos_share=_ratio(K * rows * (k_pos**2).sum(0), total),
        bias_key_con_share=_ratio(rows * (k_con**2).sum((0, 1)), total),
    )
