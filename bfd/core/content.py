"""Pass 2: everything that needs the content factor (METHOD.md, Stage 1 sums of squares and
the Stage 2 content terms).

Pass 2 is one projection of the content ``c[n, t] = x[n, t] − mu − pos[t]`` onto every head's
query- and key-side modes (all heads in one matmul), then per-image dh x dh Grams. Because
``U_h`` and ``V_h`` are orthonormal bases of the heads' read-in spaces, the Grams
``K_n = (C_n U)ᵀ(C_n U)`` carry the same information as METHOD.md's ``G_A = (C_n A)ᵀ(C_n A)``
(``G_A = R_Aᵀ U_c K_n U_cᵀ R_A``) and give ``E_cc`` and the per-mode terms directly:

    ||C_n M C_nᵀ||²_F = Σ_ij σ_i σ_j K_q,n[i, j] K_k,n[i, j]

No T x T matrix is formed. Centering and sums of squares run in float64; the projection and
Grams run in ``compute_dtype``; Grams are accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bfd.core.anova import Means
from bfd.core.checks import require
from bfd.core.heads import HeadMaps, Modes

COMPUTE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Pass2State:
    """Additive float64 sums of pass 2 over a set of images.

    Attributes:
        n: images seen.
        ss_total: ``Σ ||x − mu||²``.
        ss_img: ``T Σ_n ||img[n]||²``.
        ss_int: ``Σ ||r||²``.
        ss_content: ``Σ ||c||²`` (normalises the orthogonality residual).
        cross_pos_content: ``Σ_{n,t} <pos[t], c[n, t]>`` (zero in exact arithmetic).
        K_q: ``Σ_n (C_n U)ᵀ(C_n U)``, ``(H, dh, dh)``.
        K_k: ``Σ_n (C_n V)ᵀ(C_n V)``, ``(H, dh, dh)``.
        e_cc: ``E_cc`` per head, ``(H,)``.
        cc_mode: ``Σ_n (Σ_t (u_k·c)²)(Σ_t (v_k·c)²)`` per head and mode, ``(H, dh)``.
        logit_residual: largest relative residual of the 9-block logit reconstruction over the
            checked images (NaN when none was checked).
    """

    n: int
    ss_total: float
    ss_img: float
    ss_int: float
    ss_content: float
    cross_pos_content: float
    K_q: np.ndarray
    K_k: np.ndarray
    e_cc: np.ndarray
    cc_mode: np.ndarray
    logit_residual: float = float("nan")

    @classmethod
    def empty(cls, num_heads: int, head_dim: int) -> Pass2State:
        z = np.zeros((num_heads, head_dim, head_dim))
        return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, z, z.copy(), np.zeros(num_heads),
                   np.zeros((num_heads, head_dim)))

    def __add__(self, other: Pass2State) -> Pass2State:
        require(
            self.K_q.shape == other.K_q.shape,
            f"cannot merge pass-2 states of shapes {self.K_q.shape} and {other.K_q.shape}",
        )
        return Pass2State(
            n=self.n + other.n,
            ss_total=self.ss_total + other.ss_total,
            ss_img=self.ss_img + other.ss_img,
            ss_int=self.ss_int + other.ss_int,
            ss_content=self.ss_content + other.ss_content,
            cross_pos_content=self.cross_pos_content + other.cross_pos_content,
            K_q=self.K_q + other.K_q,
            K_k=self.K_k + other.K_k,
            e_cc=self.e_cc + other.e_cc,
            cc_mode=self.cc_mode + other.cc_mode,
            logit_residual=float(np.fmax(self.logit_residual, other.logit_residual)),
        )


def _dot(a: torch.Tensor) -> float:
    flat = a.reshape(-1)
    return float(flat @ flat)


class Pass2Plan:
    """What pass 2 needs, prepared once and reused for every chunk.

    Args:
        means: result of pass 1.
        maps: head read-in maps (for the logit-reconstruction check).
        modes: bi-orthogonal modes of the heads.
        compute_dtype: "float32" (fast, default) or "float64" for the projection and Grams.
        device: torch device of the chunks.
        check_images: images with global index below this get the 9-block logit check.
    """

    def __init__(
        self,
        means: Means,
        maps: HeadMaps,
        modes: Modes,
        compute_dtype: str = "float32",
        device: str | torch.device = "cpu",
        check_images: int = 4,
    ) -> None:
        require(
            compute_dtype in COMPUTE_DTYPES,
            f"compute_dtype must be one of {sorted(COMPUTE_DTYPES)}; got {compute_dtype!r}",
        )
        require(
            means.pos.shape[1] == maps.dim,
            f"activations have width {means.pos.shape[1]} but qkv expects d={maps.dim}",
        )
        self.means = means
        self.maps = maps
        self.check_images = check_images
        self.device = torch.device(device)
        self.dtype = COMPUTE_DTYPES[compute_dtype]
        H, d, dh = modes.U.shape
        self.num_heads, self.head_dim = H, dh
        self.mu = torch.from_numpy(means.mu).to(self.device)
        self.pos = torch.from_numpy(means.pos).to(self.device)
        # All heads' query and key modes side by side: one (d, 2·H·dh) projection.
        W = np.concatenate([modes.U, modes.V], axis=0).transpose(1, 0, 2).reshape(d, 2 * H * dh)
        self.W = torch.from_numpy(np.ascontiguousarray(W)).to(self.device, self.dtype)
        sigma = torch.from_numpy(modes.sigma).to(self.device)
        self.sigma_outer = sigma[:, :, None] * sigma[:, None, :]

    def chunk(self, x: torch.Tensor, start: int = 0) -> Pass2State:
        """Pass-2 sums of one chunk ``x (n, T, d)`` whose first image has index ``start``."""
        n, T, d = x.shape
        require(
            (T, d) == tuple(self.pos.shape),
            f"chunk has (tokens, dim)={(T, d)}; pass 1 saw {tuple(self.pos.shape)}",
        )
        H, dh = self.num_heads, self.head_dim
        x64 = x.to(self.device, torch.float64)
        c = x64 - self.mu
        ss_total = _dot(c)
        c -= self.pos
        ss_content = _dot(c)
        cross = float((c.sum(0) * self.pos).sum())
        img = c.mean(1, keepdim=True)
        ss_img = T * _dot(img)
        ss_int = _dot(c - img)

        Z = (c.to(self.dtype).reshape(n * T, d) @ self.W).reshape(n, T, 2 * H, dh)
        Z = Z.permute(0, 2, 1, 3)
        K = (Z.transpose(-1, -2) @ Z).to(torch.float64)
        Kq, Kk = K[:, :H], K[:, H:]
        e_cc = torch.einsum("nhij,nhij,hij->h", Kq, Kk, self.sigma_outer)
        cc_mode = (Kq.diagonal(dim1=-2, dim2=-1) * Kk.diagonal(dim1=-2, dim2=-1)).sum(0)

        n_check = min(max(self.check_images - start, 0), n)
        residual = logit_residual(x64[:n_check], self.means, self.maps) if n_check else np.nan
        return Pass2State(
            n=n,
            ss_total=ss_total,
            ss_img=ss_img,
            ss_int=ss_int,
            ss_content=ss_content,
            cross_pos_content=cross,
            K_q=Kq.sum(0).cpu().numpy(),
            K_k=Kk.sum(0).cpu().numpy(),
            e_cc=e_cc.cpu().numpy(),
            cc_mode=cc_mode.cpu().numpy(),
            logit_residual=float(residual),
        )


def logit_residual(x: torch.Tensor, means: Means, maps: HeadMaps) -> float:
    """Relative residual of the 9-block reconstruction of the logits ``x M xᵀ`` (METHOD.md,
    "Validation" 1): with ``x = mu + pos + c`` the blocks of every (query, key) factor pair
    must sum to the full logit map. Checked on the given few images, float64, all heads.
    """
    x = x.to(torch.float64)
    mu = torch.from_numpy(means.mu).to(x.device)
    pos = torch.from_numpy(means.pos).to(x.device)
    A = torch.from_numpy(maps.A).to(x.device)
    B = torch.from_numpy(maps.B).to(x.device)
    n, T, d = x.shape
    factors = [mu.expand(n, T, d), pos.expand(n, T, d), x - mu - pos]

    def project(f: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        # (n, T, d) x (H, d, dh) -> (H, n, T, dh)
        return torch.einsum("ntd,hdk->hntk", f, R)

    qs = [project(f, A) for f in factors]
    ks = [project(f, B) for f in factors]
    full = project(x, A) @ project(x, B).transpose(-1, -2)
    blocks = sum(q @ k.transpose(-1, -2) for q in qs for k in ks)
    den = torch.linalg.vector_norm(full)
    return float(torch.linalg.vector_norm(full - blocks) / den) if den > 0 else 0.0
