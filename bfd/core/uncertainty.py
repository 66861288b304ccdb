"""Intervals by a delete-a-group jackknife over G image groups (docs/method.md, "Uncertainty").

Image n belongs to group ``n mod G``. The passes keep, per group, the content sum
``D_g = Σ_{n in g} c[n]`` (pass 1) and the group's share of every pass-2 second moment. Deleting
group g then needs no second pass over the images: with ``N' = N − n_g`` and
``δ = −D_g / N'`` (how the per-position means move), the subsample's

    pos'  = pos + δ − mean_t δ
    SS_c' = SS_c − SS_c,g − ||D_g||² / N'          (content around its own pos')
    SS_img' = SS_img − SS_img,g − T N' ||mean_t δ||²
    K'    = K − K_g − N' Σ_t (δ_t U)ᵀ(δ_t U)        (K_q; K_k with V)

are exact. ``E_cc`` of the replicate, from each image's Grams re-centred on the replicate's
means (``K_n + YᵀF + FᵀY + FᵀF``, ``F = −δ U``), is exact but for the terms in
``(Y_nᵀF_q) ∘ (Z_nᵀF_k)``, second order in ``δ`` (``Replicates._recentred_cc``; docs/method.md).

The interval of an estimate θ with replicates θ_(g) over the m non-empty groups is
``θ ± t_{m−1} · se``, ``se² = (m − 1)/m · Σ_g (θ_(g) − mean θ_(·))²``. It covers the variation
from sampling the images (independent draws from one population), not weights or seeds.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bfd.core.adjusted import _gram, _pair, _sym, energies, energies_adj, stage1_shares
from bfd.core.anova import Means
from bfd.core.content import Pass2State
from bfd.core.heads import Modes, one_thread
from bfd.core.sampling import DEFAULT_CI_TARGET as DEFAULT_CI_TARGET

LAYER_SHARES = ("frac_pos", "frac_img", "frac_int", "frac_content", "frac_pos_adj",
                "frac_img_adj", "frac_int_adj", "frac_content_adj")
BLOCK_NAMES = ("pp", "pc", "cp", "cc")
HEAD_SHARES = (*(f"f_{b}" for b in BLOCK_NAMES), *(f"f_{b}_adj" for b in BLOCK_NAMES))
STATS = ("se", "lo", "hi")
LAYER_INTERVALS = tuple(f"{s}_{k}" for s in LAYER_SHARES for k in STATS)
HEAD_INTERVALS = tuple(f"{s}_{k}" for s in HEAD_SHARES for k in STATS)
# The main shares whose interval width decides whether N is enough: the positional share of
# the layer (the content share is its complement) and every head's energy shares.
ADEQUACY_SHARES = ("frac_pos_adj", *(f"f_{b}_adj" for b in BLOCK_NAMES))


def t_quantile(df: int, p: float = 0.975) -> float:
    """Student-t quantile of ``df`` (an integer, as m − 1 is) degrees of freedom, to float
    rounding: bisection on the closed-form distribution function (Abramowitz & Stegun
    26.7.3-4). NaN for df < 1."""
    if not df >= 1:
        return float("nan")
    if int(df) != df or not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs an integer df >= 1 and 0.5 < p < 1; got {df}, {p}")
    central = 2 * p - 1  # P(|T| <= t)
    lo, hi = 0.0, 1.0
    while _t_central(hi, int(df)) < central:
        lo, hi = hi, 2 * hi
    while lo < (mid := 0.5 * (lo + hi)) < hi:
        lo, hi = (mid, hi) if _t_central(mid, int(df)) < central else (lo, mid)
    return hi


def _t_central(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's T with integer ``df``: a finite series in ``cos² θ``,
    ``θ = atan(t / √df)``."""
    theta = math.atan(t / math.sqrt(df))
    c2, term, series = math.cos(theta) ** 2, 1.0, 1.0
    if df % 2 == 0:  # sin θ (1 + 1/2 c² + 1·3/(2·4) c⁴ + ... up to c^(df−2))
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            series += term
        return math.sin(theta) * series
    if df == 1:
        return 2 * theta / math.pi
    for k in range(1, (df - 1) // 2):  # 1 + 2/3 c² + 2·4/(3·5) c⁴ + ... up to c^(df−3)
        term *= c2 * (2 * k) / (2 * k + 1)
        series += term
    return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)


def _project(F: np.ndarray, modes: Modes) -> tuple[np.ndarray, np.ndarray]:
    """``F (..., T, d)`` on every head's query and key modes: ``(..., H, T, dh)`` each, in
    one matmul (numpy's einsum here ran without BLAS)."""
    H = modes.U.shape[0]
    P = _project_stacked(F, modes)
    return P[..., :H, :, :], P[..., H:, :, :]


def _project_stacked(F: np.ndarray, modes: Modes) -> np.ndarray:
    """``F (..., T, d)`` on the query modes of every head, then on their key modes:
    ``(..., 2H, T, dh)``, contiguous."""
    H, d, dh = modes.U.shape
    W = torch.from_numpy(np.concatenate([modes.U, modes.V], axis=0))  # (2H, d, dh)
    W = W.permute(1, 0, 2).reshape(d, 2 * H * dh)
    P = torch.from_numpy(np.ascontiguousarray(F)) @ W  # (..., T, 2·H·dh)
    # torch's copy to the head-major layout: numpy's took 1.8x as long as the whole product
    return P.view(*F.shape[:-1], 2 * H, dh).movedim(-2, -3).contiguous().numpy()


def _fractions(energy: np.ndarray) -> np.ndarray:
    total = energy.sum(-1, keepdims=True)
    return np.divide(energy, total, out=np.full(energy.shape, np.nan), where=total != 0)


def _classes(frac: np.ndarray) -> np.ndarray:
    """Index of the head-type class (cc, pc + cp, pp) of each row of fractions."""
    classes = np.stack([frac[..., 3], frac[..., 1] + frac[..., 2], frac[..., 0]], axis=-1)
    return np.nan_to_num(classes, nan=-1).argmax(-1)


class Replicates:
    """The estimates of one layer on the whole sample and with each group deleted.

    The query and key sides travel together, stacked on the head axis (query heads, then key
    heads), so that each Gram of a replicate is one product for both sides.
    """

    def __init__(self, means: Means, p2: Pass2State, modes: Modes | None) -> None:
        self.means, self.p2, self.modes = means, p2, modes
        self.N, self.T = means.n, means.pos.shape[0]
        n_g = means.group_n
        self.present = np.flatnonzero(n_g > 0)
        if modes is None:
            return
        self.H = modes.U.shape[0]
        self._grams: dict = {}
        self._pools: dict = {}
        self.so = modes.sigma[:, :, None] * modes.sigma[:, None, :]
        self.P = _project_stacked(means.pos, modes)  # (2H, T, dh)
        # each group's content sum projected: (G', 2H, T, dh)
        self.D = _project_stacked(means.group_content, modes)

    def estimate(self, drop: int | None = None) -> dict[str, np.ndarray]:
        """Raw and corrected shares without group ``drop`` (the whole sample for None)."""
        m, p2, N, T = self.means, self.p2, self.N, self.T
        if drop is None:
            n = N
            ss = (m.ss_pos, p2.ss_img, p2.ss_int)
        else:
            n = N - m.group_n[drop]
            D = m.group_content[drop]
            d_mean = -D.mean(0) / n
            ss_c = p2.ss_content - p2.group_ss_content[drop] - np.sum(D * D) / n
            ss_img = p2.ss_img - p2.group_ss_img[drop] - T * n * np.sum(d_mean**2)
            pos = m.pos - D / n - d_mean
            ss = (n * np.sum(pos**2), ss_img, ss_c - ss_img)
        out = stage1_shares(n, T, *ss)
        if self.modes is None:
            return out
        H = self.H
        keep = [g for g in self.present if g != drop]
        cc = 0.0
        if drop is None:
            P, K_q, K_k, KK = self.P, p2.K_q, p2.K_k, p2.KK
        else:
            dP = -self.D[drop] / n
            P = self.P + dP - dP.mean(1, keepdims=True)
            moved = n * _gram(dP)
            # the Grams of the images outside, centred on all images, then on their own
            out_q, out_k = p2.K_q - p2.group_K_q[drop], p2.K_k - p2.group_K_k[drop]
            K_q, K_k = out_q - moved[:H], out_k - moved[H:]
            KK = p2.KK - p2.group_KK[drop]
            cc = self._recentred_cc(drop, n, out_q, out_k, moved / n)
        grams = _gram(P)
        energy = energies(n, self.so, grams[:H], grams[H:], K_q, K_k, KK, cc)
        quarters = [tuple(g for g in keep if g % 4 == q) for q in range(4)]
        pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)
                 if quarters[a] and quarters[b]]
        G = {(a, b): self._quarter_gram(quarters[a], quarters[b]) for a, b in pairs}
        energy_adj = energies_adj(n, self.so, {k: g[:H] for k, g in G.items()},
                                  {k: g[H:] for k, g in G.items()}, K_q, K_k, KK, cc)
        frac, frac_adj = _fractions(energy), _fractions(energy_adj)
        for i, b in enumerate(BLOCK_NAMES):
            out[f"f_{b}"], out[f"f_{b}_adj"] = frac[:, i], frac_adj[:, i]
        out["energy"], out["energy_adj"] = energy, energy_adj
        return out

    def _recentred_cc(self, drop: int, n: int, out_q: np.ndarray, out_k: np.ndarray,
                      shifted: np.ndarray) -> np.ndarray:
        """What ``E_cc`` of the images outside group ``drop`` gains when their content is
        centred on their own means, ``(H,)``: with ``F_q = D_g U / N'`` (``F_k`` with V) the
        images' query Grams become ``K + YᵀF_q + F_qᵀY + F_qᵀF_q`` (the key ones likewise);
        the terms linear in ``Y`` or ``Z`` and the Grams are pass 2's ``cc_recentre``,
        ``Σ_{n∉g} Y_n = −D_g U`` gives those linear in ``Y`` alone, and the terms in
        ``(YᵀF_q) ∘ (ZᵀF_k)`` are left out (docs/method.md, "Uncertainty").

        Args:
            out_q, out_k: the query and key Grams of the images outside, centred on all
                images, ``(H, dh, dh)``.
            shifted: ``F_qᵀF_q`` and ``F_kᵀF_k`` stacked, ``(2H, dh, dh)``.
        """
        p2, H, so = self.p2, self.H, self.so
        if p2.cc_recentre.shape[0] <= drop:  # a state made without the groups' shifts
            return np.zeros(H)
        Pq, Pk = shifted[:H], shifted[H:]
        return (p2.cc_recentre[drop] + _pair(so, out_q, Pk) + _pair(so, Pq, out_k)
                - 3 * n * _pair(so, Pq, Pk))

    def _quarter_gram(self, a: tuple[int, ...], b: tuple[int, ...]) -> np.ndarray:
        """``sym(Y_aᵀ Y_b)`` of the quarters made of groups ``a`` and ``b``, both sides
        stacked; cached, since a deleted group changes only its own quarter."""
        if (a, b) not in self._grams:
            self._grams[a, b] = _sym(_gram(self._pooled(a), self._pooled(b)))
        return self._grams[a, b]

    def _pooled(self, groups: tuple[int, ...]) -> np.ndarray:
        """The estimate of ``pos`` projected on the query and key modes from the pooled
        images of ``groups``; cached, since most quarters recur across the replicates."""
        if groups not in self._pools:
            n = self.means.group_n[list(groups)].sum()
            D = self.D[list(groups)].sum(0)
            self._pools[groups] = self.P + (D - D.mean(1, keepdims=True)) / n
        return self._pools[groups]


def layer_statistics(
    means: Means, p2: Pass2State, modes: Modes | None, ci_target: float = DEFAULT_CI_TARGET
) -> dict[str, np.ndarray]:
    """Corrected shares, their intervals and the sample-size adequacy of one layer.

    Returns:
        Named arrays: layer scalars (``frac_pos_adj``, ..., ``frac_pos_chance``,
        ``<share>_se/_lo/_hi``, ``ci_halfwidth``, ``n_images_for_target``) and, with modes,
        ``energy_adj``/``frac_adj`` ``(H, 4)`` and per-head ``f_<b>[_adj]_se/_lo/_hi`` and
        ``head_type_stability`` ``(H,)``. Intervals are NaN without a jackknife (G = 0).
    """
    # replicates of a few images leave some corrected shares NaN (a division by zero)
    with one_thread(), np.errstate(divide="ignore", invalid="ignore"):
        return _layer_statistics(means, p2, modes, ci_target)


def _layer_statistics(means, p2, modes, ci_target):
    rep = Replicates(means, p2, modes)
    full = rep.estimate()
    names = LAYER_SHARES + (HEAD_SHARES if modes is not None else ())
    out: dict[str, np.ndarray] = {k: v for k, v in full.items() if not k.startswith("f_")}
    out.pop("energy", None)
    if modes is not None:
        out["frac_adj"] = _fractions(full["energy_adj"])
    groups = rep.present if means.groups else np.zeros(0, int)
    # A replicate is the decomposition of the images outside its group, which BFD defines for
    # 2 images or more: a replicate of 1 (N = 2) has all of its variation positional
    # (frac_pos 1 in every replicate, an interval of width 0), so no replicate is made.
    if len(groups) and (means.n - means.group_n[groups]).min() < 2:
        groups = np.zeros(0, int)
    reps = [rep.estimate(int(g)) for g in groups]
    m = len(reps)
    t = t_quantile(m - 1) if m >= 2 else float("nan")
    halfwidths = []
    for name in names:
        theta = np.asarray(full[name], float)
        if m >= 2:
            r = np.stack([np.asarray(x[name], float) for x in reps])
            se = np.sqrt((m - 1) / m * ((r - r.mean(0)) ** 2).sum(0))
        else:
            se = np.full(theta.shape, np.nan)
        out[f"{name}_se"], out[f"{name}_lo"], out[f"{name}_hi"] = se, theta - t * se, theta + t * se
        if name in ADEQUACY_SHARES:
            halfwidths.append(np.ravel(t * se))
    # a degenerate head (no energy) has no interval and does not count
    widths = np.concatenate(halfwidths)
    hw = float(np.nanmax(widths)) if m >= 2 and np.isfinite(widths).any() else float("nan")
    out["ci_halfwidth"] = np.asarray(hw)
    out["n_images_for_target"] = np.asarray(
        float(np.ceil(means.n * (hw / ci_target) ** 2)) if np.isfinite(hw) else np.nan)
    if modes is not None:
        frac = _fractions(full["energy"])
        base = _classes(frac)
        same = [(_classes(_fractions(x["energy"])) == base) for x in reps]
        stability = np.mean(same, axis=0) if m else np.full(base.shape, np.nan)
        # a head without energy has no type to be stable
        out["head_type_stability"] = np.where(np.isnan(frac).all(-1), np.nan, stability)
    return out
