"""Stage 2 read-in maps and bi-orthogonal modes of each head (docs/method.md, "Stage 2" and
"Bi-orthogonal modes").

The query-key interaction of head h is kept as its two factors, M_h = s A_h B_hᵀ, and its SVD is
computed from them (QR of each factor, SVD of the dh x dh core): a dense d x d matrix is never
formed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from bfd.core.checks import as_float64, require


@dataclass(frozen=True)
class HeadMaps:
    """Per-head read-in maps of a fused timm ``attn.qkv`` weight.

    Attributes:
        A: query read-in, ``(H, d, dh)``: the logit is ``s (A_hᵀ x_i) · (B_hᵀ x_j)``.
        B: key read-in, ``(H, d, dh)``.
        scale: ``attn.scale`` (``dh ** -0.5`` in timm).
        bias_q: query bias ``b_q`` per head, ``(H, dh)``; None when qkv has no bias. Not part
            of M (docs/method.md); used by the logit check and the key-side bias share.
        bias_k: key bias ``b_k`` per head, ``(H, dh)``, likewise.
    """

    A: np.ndarray
    B: np.ndarray
    scale: float
    bias_q: np.ndarray | None = None
    bias_k: np.ndarray | None = None

    @property
    def num_heads(self) -> int:
        return self.A.shape[0]

    @property
    def dim(self) -> int:
        return self.A.shape[1]

    @property
    def head_dim(self) -> int:
        return self.A.shape[2]


@dataclass(frozen=True)
class Modes:
    """SVD ``M_h = Σ_k σ_k u_k v_kᵀ`` of every head, signs fixed (docs/method.md).

    Attributes:
        sigma: ``(H, dh)`` singular values, descending.
        U: ``(H, d, dh)`` query-side orthonormal modes (columns), largest-magnitude entry > 0.
        V: ``(H, d, dh)`` key-side orthonormal modes; ``v_k`` flips with ``u_k``.
    """

    sigma: np.ndarray
    U: np.ndarray
    V: np.ndarray


def head_maps(
    qkv_weight: np.ndarray | torch.Tensor,
    num_heads: int,
    scale: float | None = None,
    qkv_bias: np.ndarray | torch.Tensor | None = None,
) -> HeadMaps:
    """Split timm's fused qkv weight ``W (3·d_attn, d)`` into per-head ``A_h`` and ``B_h``.

    ``A_h = W[h·dh:(h+1)·dh, :]ᵀ`` and ``B_h = W[d_attn + h·dh : d_attn + (h+1)·dh, :]ᵀ``.

    Args:
        qkv_weight: the ``attn.qkv.weight`` of one block.
        num_heads: number of heads H; must divide ``d_attn``.
        scale: logit scale; ``dh ** -0.5`` (timm's default) when None.
        qkv_bias: the ``attn.qkv.bias (3·d_attn,)``, split like the rows of the weight.

    Returns:
        The head maps in float64.

    Raises:
        ValueError: when the weight is not 2-D, its rows are not 3·d_attn, H does not divide
            d_attn, or it holds NaN/inf.
    """
    w = as_float64(qkv_weight, "qkv_weight")
    require(w.ndim == 2, f"qkv_weight must be 2-D (3*d_attn, d); got shape {tuple(w.shape)}")
    rows, d = w.shape
    require(
        rows % 3 == 0 and rows > 0,
        f"qkv_weight rows must be 3*d_attn; got {rows} rows (shape {tuple(w.shape)})",
    )
    d_attn = rows // 3
    require(
        isinstance(num_heads, int | np.integer) and num_heads > 0 and d_attn % num_heads == 0,
        f"num_heads must be a positive divisor of d_attn={d_attn} (a third of the rows of "
        f"qkv_weight, shape {tuple(w.shape)}); got num_heads={num_heads!r}",
    )
    dh = d_attn // num_heads
    require(dh <= d, f"head width dh={dh} exceeds model width d={d}; expected dh <= d")
    if scale is None:
        scale = dh**-0.5
    require(np.isfinite(scale) and scale > 0, f"scale must be finite and > 0; got {scale!r}")
    A = w[:d_attn].reshape(num_heads, dh, d).transpose(0, 2, 1)
    B = w[d_attn : 2 * d_attn].reshape(num_heads, dh, d).transpose(0, 2, 1)
    bias_q = bias_k = None
    if qkv_bias is not None:
        b = as_float64(qkv_bias, "qkv_bias")
        require(b.shape == (rows,), f"qkv_bias must be ({rows},) like the qkv rows; got "
                f"shape {tuple(b.shape)}")
        bias_q = b[:d_attn].reshape(num_heads, dh)
        bias_k = b[d_attn : 2 * d_attn].reshape(num_heads, dh)
    return HeadMaps(A=np.ascontiguousarray(A), B=np.ascontiguousarray(B), scale=float(scale),
                    bias_q=bias_q, bias_k=bias_k)


# torch.set_num_threads is process-wide: it sets the count that every thread takes when it
# first uses torch, and MKL's. Blocks of one_thread on several threads at once therefore share
# one saved count: the first to enter saves it, each one leaving restores it on its own thread.
_THREADS_LOCK = threading.Lock()
_inside = 0  # threads now inside one_thread
_outside = 1  # torch's thread count when the first of them entered
_nesting = threading.local()  # depth: blocks this thread is inside


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block: small LAPACK and matmul calls, or a whole
    decompose task that shares the cores with others (``decompose_site_layer(threads=1)``).

    Right after a threaded GEMM, torch's OpenMP workers still spin; a threaded QR/SVD of these
    small matrices then fights them and took 0.5-1.3 s here instead of 10 ms.

    Safe on several threads at once (decompose tasks in one process): a per-thread save and
    restore would let a block entered inside another save 1 and leave the whole process on one
    thread, so that later forwards ran on one core and gave other float32 bits.
    """
    global _inside, _outside
    with _THREADS_LOCK:
        if _inside == 0:
            _outside = torch.get_num_threads()
        _inside += 1
        _nesting.depth = getattr(_nesting, "depth", 0) + 1
        torch.set_num_threads(1)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _inside -= 1
            _nesting.depth -= 1
            # A block inside another on this thread (the modes inside a one-thread task)
            # leaves it on one thread. Leaving the outermost, this thread goes back to the
            # count outside (a pool thread that first used torch inside another's block took 1
            # and is mended here too); while others are still inside, only their LAPACK calls
            # may use more threads than one, never fewer.
            torch.set_num_threads(1 if _nesting.depth else _outside)


def bi_orthogonal_modes(maps: HeadMaps) -> Modes:
    """Factored SVD of every ``M_h = s A_h B_hᵀ`` (docs/method.md, "Bi-orthogonal modes").

    With ``A = Q_A R_A`` and ``B = Q_B R_B``, ``M = Q_A (s R_A R_Bᵀ) Q_Bᵀ``; the SVD of the
    dh x dh core gives ``U = Q_A U_c`` and ``V = Q_B V_c``. Signs are fixed so that the
    largest-magnitude entry of each ``u_k`` is positive, ``v_k`` flipping with it, which makes
    the modes a deterministic function of ``M``.
    """
    with one_thread():
        Qa, Ra = torch.linalg.qr(torch.from_numpy(maps.A))
        Qb, Rb = torch.linalg.qr(torch.from_numpy(maps.B))
        core = maps.scale * Ra @ Rb.transpose(1, 2)
        Uc, sigma, Vct = torch.linalg.svd(core)
    U = (Qa @ Uc).numpy()
    V = (Qb @ Vct.transpose(1, 2)).numpy()
    idx = np.abs(U).argmax(axis=1, keepdims=True)
    sign = np.sign(np.take_along_axis(U, idx, axis=1))
    sign[sign == 0] = 1.0
    return Modes(sigma=sigma.numpy(), U=U * sign, V=V * sign)
