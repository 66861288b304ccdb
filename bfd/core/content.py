"""Pass 2: everything that needs the content factor (docs/method.md, Stage 1 sums of squares and
the Stage 2 content terms).

Pass 2 is one projection of the content ``c[n, t] = x[n, t] − mu − pos[t]`` onto every head's
query- and key-side modes (all heads in one matmul), then per-image dh x dh Grams. Because
``U_h`` and ``V_h`` are orthonormal bases of the heads' read-in spaces, the Grams
``K_n = (C_n U)ᵀ(C_n U)`` carry the same information as docs/method.md's ``G_A = (C_n A)ᵀ(C_n A)``
(``G_A = R_Aᵀ U_c K_n U_cᵀ R_A``) and give ``E_cc`` and the per-mode terms directly:

    ||C_n M C_nᵀ||²_F = Σ_ij σ_i σ_j K_q,n[i, j] K_k,n[i, j]

No T x T matrix is formed. Centering and sums of squares run in float64; the projection and
Grams run in ``compute_dtype``; Grams are accumulated in float64.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from bfd.core.anova import Means, images_per_block
from bfd.core.checks import require
from bfd.core.heads import HeadMaps, Modes
from bfd.core.sampling import image_indices, jackknife_group

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
        KK: ``Σ_n K_q,n ∘ K_k,n`` (elementwise product of each image's Grams), ``(H, dh, dh)``:
            ``E_cc = Σ_ij σ_i σ_j KK[i, j]`` and the per-mode ``Σ_n (Σ_t (u_k·c)²)(Σ_t
            (v_k·c)²) = KK[k, k]``.
        logit_residual: largest relative residual of the 9-block logit reconstruction over the
            checked images (NaN when none was checked).
        group_ss_content, group_ss_img: ``ss_content`` and ``ss_img`` of each jackknife group,
            ``(G,)`` (``(0,)`` without a jackknife).
        group_K_q, group_K_k, group_KK: ``K_q``, ``K_k`` and ``KK`` of each group,
            ``(G, H, dh, dh)``: the per-group second moments the jackknife deletes.
        cc_recentre: per jackknife group g and head, ``(G, H)``: the terms of ``E_cc`` of
            the images outside g that are linear in the shift of their content when g is
            deleted (``c' = c + D_g / N'``): ``Σ_{n∉g} 2 Σ_ij σ_i σ_j (K_q,n[i, j] (Z_nᵀ
            F_k)[i, j] + (Y_nᵀ F_q)[i, j] K_k,n[i, j])`` with ``Y_n = C_n U``, ``Z_n = C_n V``,
            ``F_q = D_g U / N'``, ``F_k = D_g V / N'`` (docs/method.md, "Uncertainty").
    """

    n: int
    ss_total: float
    ss_img: float
    ss_int: float
    ss_content: float
    cross_pos_content: float
    K_q: np.ndarray
    K_k: np.ndarray
    KK: np.ndarray
    logit_residual: float = float("nan")
    group_ss_content: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group_ss_img: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group_K_q: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 0)))
    group_K_k: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 0)))
    group_KK: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 0)))
    cc_recentre: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @classmethod
    def empty(cls, num_heads: int, head_dim: int, groups: int = 0) -> Pass2State:
        z = np.zeros((num_heads, head_dim, head_dim))
        zg = np.zeros((groups, num_heads, head_dim, head_dim))
        return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, z, z.copy(), z.copy(), float("nan"),
                   np.zeros(groups), np.zeros(groups), zg, zg.copy(), zg.copy(),
                   np.zeros((groups, num_heads)))

    def _check_merge(self, other: Pass2State) -> None:
        require(
            self.K_q.shape == other.K_q.shape,
            f"cannot merge pass-2 states of shapes {self.K_q.shape} and {other.K_q.shape}",
        )

    def __iadd__(self, other: Pass2State) -> Pass2State:
        """``other`` added into this state's arrays (the same sums as ``+``, no new arrays)."""
        self._check_merge(other)
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name == "logit_residual":
                self.logit_residual = float(np.fmax(mine, theirs))
            elif isinstance(mine, np.ndarray):
                mine += theirs
            else:
                setattr(self, f.name, mine + theirs)
        return self

    def __add__(self, other: Pass2State) -> Pass2State:
        out = copy.deepcopy(self)
        out += other
        return out


def _dot(a: torch.Tensor) -> float:
    flat = a.reshape(-1)
    return float(flat @ flat)


class Pass2Plan:
    """What pass 2 needs, prepared once and reused for every chunk.

    Args:
        means: result of pass 1.
        maps: head read-in maps (for the logit-reconstruction check); None for Stage 1 only
            (e.g. the ``resid`` site).
        modes: bi-orthogonal modes of the heads; None with ``maps``.
        compute_dtype: "float32" (fast, default) or "float64" for the projection and Grams.
        device: torch device of the chunks.
        check_images: images with global index below this get the 9-block logit check.
    """

    def __init__(
        self,
        means: Means,
        maps: HeadMaps | None,
        modes: Modes | None,
        compute_dtype: str = "float32",
        device: str | torch.device = "cpu",
        check_images: int = 2,
    ) -> None:
        require(
            compute_dtype in COMPUTE_DTYPES,
            f"compute_dtype must be one of {sorted(COMPUTE_DTYPES)}; got {compute_dtype!r}",
        )
        require(
            maps is None or means.pos.shape[1] == maps.dim,
            f"activations have width {means.pos.shape[1]} but qkv expects "
            f"d={maps.dim if maps else None}",
        )
        # without the per-group sums: the plan travels to every pass-2 task, which needs only
        # their projection on the modes (``shift``)
        self.means = replace(means, group_n=None, group_content=None)
        self.maps = maps
        self.check_images = check_images
        self.device = torch.device(device)
        self.dtype = COMPUTE_DTYPES[compute_dtype]
        d = means.pos.shape[1]
        H, _, dh = modes.U.shape if modes is not None else (0, d, 0)
        self.num_heads, self.head_dim = H, dh
        self.mu = torch.from_numpy(means.mu).to(self.device)
        self.pos = torch.from_numpy(means.pos).to(self.device)
        # All heads' query and key modes stacked: one (2·H·dh, d) projection.
        W_t = (
            np.concatenate([modes.U, modes.V], axis=0).transpose(0, 2, 1).reshape(2 * H * dh, d)
            if modes is not None
            else np.zeros((0, d))
        )
        self.W_t = torch.from_numpy(np.ascontiguousarray(W_t)).to(self.device, self.dtype)
        self.shift = self.sigma2 = None
        if modes is not None and means.groups and means.group_content is not None:
            self.shift, self.sigma2 = self._shifts(means, modes)

    def _shifts(self, means: Means, modes: Modes) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``cc_recentre`` contracts each image with: every group's shift of the content
        projected on every head's query then key modes, ``F_q`` and ``F_k`` (zero for a group
        whose deletion leaves no image), laid out ``(2H, dh·T, G)`` like the images'
        projections; and ``σ_i σ_j`` of each head, for both sides, ``(2H, dh, dh)``."""
        H, d, dh = modes.U.shape
        G, T = means.group_n.shape[0], means.pos.shape[0]
        left = means.n - means.group_n
        scale = np.divide(1.0, left, out=np.zeros(G), where=left > 0)
        W = np.concatenate([modes.U, modes.V], axis=0).transpose(0, 2, 1).reshape(2 * H * dh, d)
        # (G, T, d) x (d, 2H dh) -> (G, 2H, dh, T), then (2H, dh T, G)
        D = torch.from_numpy(means.group_content * scale[:, None, None]) @ torch.from_numpy(W.T)
        shift = D.view(G, T, 2 * H, dh).permute(2, 3, 1, 0).reshape(2 * H, dh * T, G)
        so = modes.sigma[:, :, None] * modes.sigma[:, None, :]
        sigma2 = torch.from_numpy(np.concatenate([so, so], axis=0))
        return (shift.contiguous().to(self.device, self.dtype),
                sigma2.to(self.device, self.dtype))

    def chunk(self, x: torch.Tensor, index: int | np.ndarray = 0) -> Pass2State:
        """Pass-2 sums of one chunk ``x (n, T, d)``; ``index`` is its first image's global
        index or all n of them."""
        n, T, d = x.shape
        require(
            (T, d) == tuple(self.pos.shape),
            f"chunk has (tokens, dim)={(T, d)}; pass 1 saw {tuple(self.pos.shape)}",
        )
        H, dh = self.num_heads, self.head_dim
        idx = image_indices(index, n)
        checked = torch.from_numpy(idx < self.check_images).to(x.device)
        x_check = (x[checked] if self.maps is not None else x[:0]).to(self.device, torch.float64)
        G = self.means.groups
        group = torch.from_numpy(jackknife_group(idx, max(G, 1))).to(self.device)
        f64 = dict(dtype=torch.float64, device=self.device)
        per_image_content, per_image_img = torch.empty(n, **f64), torch.empty(n, **f64)
        col_sum = torch.zeros((T, d), **f64)
        K = torch.empty((n, 2 * H, dh, dh), dtype=self.dtype, device=self.device)
        # each image's cc_recentre terms for every group, (n, H, G)
        recentre = (torch.empty((n, H, self.shift.shape[-1]), dtype=self.dtype,
                                device=self.device) if self.shift is not None else None)
        ss_total = ss_int = 0.0
        # A few images at a time, so that their float64 content stays in the cache through
        # its passes (a 32-image chunk of ViT-S/16: 5-7 ms of CPU instead of 10-14 ms per
        # chunk at the resid site)
        step = images_per_block(n, T, d, self.device)
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            # a copy: float64 input must not be centred in place under the caller's feet
            c = x[lo:hi].to(self.device, torch.float64, copy=True)
            c -= self.mu
            ss_total += _dot(c)
            c -= self.pos
            flat = c.reshape(hi - lo, T * d)
            per_image_content[lo:hi] = torch.linalg.vecdot(flat, flat)
            col_sum += c.sum(0)
            img = c.mean(1, keepdim=True)
            per_image_img[lo:hi] = T * (img * img).sum((1, 2))
            if H:
                # (b, 2·H·dh, T): each head's projection comes out contiguous for the Grams
                Z = torch.matmul(self.W_t, c.to(self.dtype).transpose(1, 2))
                Z = Z.view(hi - lo, 2 * H, dh, T)
                torch.matmul(Z, Z.transpose(-1, -2), out=K[lo:hi])
                if recentre is not None:
                    # 2 <(σσ ∘ K_k,n) Y_nᵀ, F_qᵀ> + 2 <(σσ ∘ K_q,n) Z_nᵀ, F_kᵀ>: each side's
                    # projection weighted by the other side's Gram, then every group's shift
                    # (a sum by group first, then one contraction, took twice as long)
                    other = torch.cat([K[lo:hi, H:], K[lo:hi, :H]], dim=1) * self.sigma2
                    weighted = torch.matmul(other, Z).view(hi - lo, 2 * H, dh * T)
                    both = torch.matmul(weighted.transpose(0, 1), self.shift)  # (2H, b, G)
                    recentre[lo:hi] = 2 * (both[:H] + both[H:]).transpose(0, 1)
            c -= img
            ss_int += _dot(c)
        ss_content = float(per_image_content.sum())
        ss_img = float(per_image_img.sum())
        cross = float((col_sum * self.pos).sum())
        K_g = KK_g = None
        if H:
            KK_n = K[:, :H] * K[:, H:]
            if G:
                K_g = _by_group(K, group, G)
                KK_g = _by_group(KK_n, group, G)
                K_sum, KK = K_g.sum(0), KK_g.sum(0)
            else:
                KK = KK_n.sum(0, dtype=torch.float64).cpu().numpy()
                K_sum = K.sum(0, dtype=torch.float64).cpu().numpy()
        else:  # Stage 1 only (the resid site): no heads to project on
            KK = K_sum = np.zeros((0, 0, 0))
        groups = {}
        if G:
            zg = np.zeros((G, H, dh, dh))
            if recentre is not None:
                # summed over the images outside each group (an image's own group is the
                # replicate that leaves it out)
                outside = (group[:, None] != torch.arange(G, device=self.device)).to(
                    torch.float64)
                groups["cc_recentre"] = torch.einsum(
                    "ng,nhg->gh", outside, recentre.to(torch.float64)).cpu().numpy()
            else:
                groups["cc_recentre"] = np.zeros((G, H))
            groups.update(
                group_ss_content=_by_group(per_image_content, group, G),
                group_ss_img=_by_group(per_image_img, group, G),
                group_K_q=K_g[:, :H] if K_g is not None else zg,
                group_K_k=K_g[:, H:] if K_g is not None else zg.copy(),
                group_KK=KK_g if KK_g is not None else zg.copy(),
            )

        residual = logit_residual(x_check, self.means, self.maps) if len(x_check) else np.nan
        return Pass2State(
            n=n,
            ss_total=ss_total,
            ss_img=ss_img,
            ss_int=ss_int,
            ss_content=ss_content,
            cross_pos_content=cross,
            K_q=K_sum[:H],
            K_k=K_sum[H:],
            KK=KK,
            logit_residual=float(residual),
            **groups,
        )


def _by_group(a: torch.Tensor, group: torch.Tensor, groups: int) -> np.ndarray:
    """Float64 sums of ``a`` over its first axis (images), one per jackknife group."""
    # index_add_ (with OMP_WAIT_POLICY=PASSIVE, as the CLI runs): 3x faster than a one-hot
    # float64 product at ViT-S/16 Grams, 32 images, 16 groups, on one or two threads
    out = torch.zeros((groups, *a.shape[1:]), dtype=torch.float64, device=a.device)
    return out.index_add_(0, group, a.to(torch.float64)).cpu().numpy()


def logit_residual(x: torch.Tensor, means: Means, maps: HeadMaps) -> float:
    """Relative residual of the 9-block reconstruction of the logits ``x M xᵀ`` (docs/method.md,
    "Validation" 1): with ``x = mu + pos + c`` the blocks of every (query, key) factor pair
    must sum to the full logit map. Checked on the given few images, float64, all heads.

    An arithmetic identity (content is defined as ``x − mu − pos``): it guards the rounding of
    the block sums only, whatever mu, pos and M are. The check of M against the model itself
    is ``bfd.core.model_check`` (docs/checks.md).
    """
    x = x.to(torch.float64)
    mu = torch.from_numpy(means.mu).to(x.device)
    pos = torch.from_numpy(means.pos).to(x.device)
    A = torch.from_numpy(maps.A).to(x.device)
    B = torch.from_numpy(maps.B).to(x.device)
    c = x - mu - pos

    def project(f: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        # (..., T, d) x (H, d, dh) -> (H, n or 1, T or 1, dh); mu and pos are projected
        # once and broadcast over the images
        p = torch.einsum("...td,hdk->h...tk", f, R)
        return p.unsqueeze(1) if p.ndim == 3 else p

    factors = [mu[None, :], pos, c]
    qs = [project(f, A) for f in factors]
    ks = [project(f, B) for f in factors]
    blocks = maps.scale * sum(q @ k.transpose(-1, -2) for q in qs for k in ks)
    full = maps.scale * project(x, A) @ project(x, B).transpose(-1, -2)
    den = torch.linalg.vector_norm(full)
    return float(torch.linalg.vector_norm(full - blocks) / den) if den > 0 else 0.0
