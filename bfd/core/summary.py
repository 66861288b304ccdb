"""Energies, fractions, types and mode statistics from the accumulated moments (docs/method.md,
"Stage 2", "Bi-orthogonal modes", "Validation").

Every quantity here is a few dh x dh products per head: the positional side needs only
``P U`` and ``P V`` (T x dh), the content side only the float64 Gram sums of pass 2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from bfd.core.adjusted import _gram
from bfd.core.anova import Means
from bfd.core.content import Pass2State
from bfd.core.heads import Modes, one_thread
from bfd.core.uncertainty import DEFAULT_CI_TARGET, _project, layer_statistics

BLOCKS = ("pp", "pc", "cp", "cc")
HEAD_TYPES = ("content-content", "content-position", "position-position")
# The label of a head or mode whose energies are all zero (a pruned head, constant
# activations) or not finite (overflow): its fractions are NaN and no class is the largest.
UNDEFINED = "undefined"


@dataclass(frozen=True)
class LayerResult:
    """Every docs/method.md quantity of one layer and site. Names follow docs/method.md.

    Shapes: ``energy``/``frac`` (H, 4) over BLOCKS; ``sigma``/``alpha``/``beta`` (H, dh);
    ``mode_energy`` (H, dh, 4); ``mode_type`` (H, dh) of block names; per-head arrays (H,).
    """

    n_images: int
    mu: np.ndarray
    pos: np.ndarray
    ss_total: float
    ss_pos: float
    ss_img: float
    ss_int: float
    frac_pos: float
    frac_img: float
    frac_int: float
    ss_identity_residual: float
    ortho_residual: float
    pos_split_half_r: float
    shuffle_frac_pos: float
    logit_residual: float
    # Stage 2 (None where only Stage 1 was asked for, e.g. at the resid site)
    energy: np.ndarray | None = None
    frac: np.ndarray | None = None
    head_type: np.ndarray | None = None
    sigma: np.ndarray | None = None
    alpha: np.ndarray | None = None
    beta: np.ndarray | None = None
    mode_energy: np.ndarray | None = None
    mode_type: np.ndarray | None = None
    mode_coupling: np.ndarray | None = None
    eff_rank: np.ndarray | None = None
    eff_rank_sigma: np.ndarray | None = None
    k90: np.ndarray | None = None
    # corrected shares, intervals, adequacy (bfd.core.uncertainty.layer_statistics)
    statistics: dict[str, np.ndarray] | None = None

    @property
    def frac_content(self) -> float:
        return self.frac_img + self.frac_int


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, NaN where the ratio is undefined: ``den`` zero or either side not
    finite (an overflowed sum has no meaningful share)."""
    num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    with np.errstate(invalid="ignore"):
        ok = (den > 0) & np.isfinite(den) & np.isfinite(num)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=ok)


def _label(shares: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """The name of the largest share along the last axis; ``UNDEFINED`` where any share is
    NaN (its energies were zero or not finite), never a guess."""
    undefined = np.isnan(shares).any(-1)
    labels = np.array(names, dtype=object)[np.nan_to_num(shares, nan=-1.0).argmax(-1)]
    labels[undefined] = UNDEFINED
    return labels


def _entropy_rank(p: np.ndarray) -> np.ndarray:
    """``exp(−Σ p log p)`` along the last axis, with 0 log 0 = 0."""
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return np.exp(-(p * logp).sum(-1))


def _k90(p: np.ndarray) -> np.ndarray:
    """Fewest modes holding 90 % of the energy (p along the last axis sums to 1)."""
    cum = np.cumsum(np.sort(p, axis=-1)[..., ::-1], axis=-1)
    # a 1e-12 slack keeps a share of exactly 0.9 from missing through rounding
    return (cum < 0.9 - 1e-12).sum(-1) + 1


def summarize_stage1(means: Means, p2: Pass2State) -> LayerResult:
    """Stage 1 quantities and quality checks of one layer and site."""
    ss_pos = means.ss_pos
    ss_total = p2.ss_total
    return LayerResult(
        n_images=means.n,
        mu=means.mu,
        pos=means.pos,
        ss_total=ss_total,
        ss_pos=ss_pos,
        ss_img=p2.ss_img,
        ss_int=p2.ss_int,
        frac_pos=float(_ratio(ss_pos, ss_total)),
        frac_img=float(_ratio(p2.ss_img, ss_total)),
        frac_int=float(_ratio(p2.ss_int, ss_total)),
        ss_identity_residual=float(
            _ratio(abs(ss_total - (ss_pos + p2.ss_img + p2.ss_int)), ss_total)
        ),
        ortho_residual=float(
            _ratio(abs(p2.cross_pos_content), np.sqrt(ss_pos * p2.ss_content))
        ),
        pos_split_half_r=means.pos_split_half_r,
        shuffle_frac_pos=float(_ratio(means.ss_pos_shuffled, ss_total)),
        logit_residual=p2.logit_residual,
    )


def summarize(
    means: Means, p2: Pass2State, modes: Modes | None, ci_target: float = DEFAULT_CI_TARGET
) -> LayerResult:
    """All docs/method.md quantities of one layer from its two passes (Stage 1 only without
    modes)."""
    stage1 = replace(summarize_stage1(means, p2),
                     statistics=layer_statistics(means, p2, modes, ci_target))
    if modes is None:
        return stage1
    N = means.n
    sig2 = modes.sigma**2
    sigma_outer = modes.sigma[:, :, None] * modes.sigma[:, None, :]
    # the projection in torch on one thread: numpy's einsum took 30-60 ms here per layer
    # (threaded BLAS on small matrices), as long as the statistics; the Grams in numpy's
    # matmul (bfd.core.adjusted._gram)
    with one_thread():
        PU, PV = _project(means.pos, modes)
        Kp_q, Kp_k = _gram(PU), _gram(PV)

    E_pp = N * (sigma_outer * Kp_q * Kp_k).sum((1, 2))
    E_pc = (sigma_outer * Kp_q * p2.K_k).sum((1, 2))
    E_cp = (sigma_outer * p2.K_q * Kp_k).sum((1, 2))
    E_cc = (sigma_outer * p2.KK).sum((1, 2))
    energy = np.stack([E_pp, E_pc, E_cp, E_cc], axis=-1)
    frac = _ratio(energy, energy.sum(-1, keepdims=True))
    frac[np.isnan(frac).any(-1)] = np.nan
    classes = np.stack([frac[:, 3], frac[:, 1] + frac[:, 2], frac[:, 0]], axis=-1)
    head_type = _label(classes, HEAD_TYPES)
    undefined = head_type == UNDEFINED

    upos = np.diagonal(Kp_q, axis1=1, axis2=2)
    vpos = np.diagonal(Kp_k, axis1=1, axis2=2)
    qcon = np.diagonal(p2.K_q, axis1=1, axis2=2)
    kcon = np.diagonal(p2.K_k, axis1=1, axis2=2)
    mode_energy = np.stack(
        [sig2 * N * upos * vpos, sig2 * upos * kcon, sig2 * qcon * vpos,
         sig2 * np.diagonal(p2.KK, axis1=1, axis2=2)],
        axis=-1,
    )
    per_mode = mode_energy.sum(-1)
    p = _ratio(per_mode, per_mode.sum(-1, keepdims=True))
    p_sigma = _ratio(sig2, sig2.sum(-1, keepdims=True))
    mode_type = _label(_ratio(mode_energy, per_mode[..., None]), BLOCKS)
    mode_type[undefined] = UNDEFINED
    eff_rank = np.where(undefined, np.nan, _entropy_rank(np.nan_to_num(p)))
    eff_rank_sigma = _entropy_rank(np.nan_to_num(p_sigma))
    eff_rank_sigma[np.isnan(p_sigma).any(-1)] = np.nan
    # 0 is no count of modes: it marks an undefined head (NULL in the heads table)
    k90 = np.where(undefined, 0, _k90(np.nan_to_num(p)))
    # a mode of sigma 0 (a pruned head's, or past W_QK's numerical rank: numpy's matrix_rank
    # tolerance) carries no logit; its singular vectors are any basis of a null space, so it
    # has no alpha or beta (NaN, NULL in the modes table) and no type (its energies are
    # rounding noise: their argmax labelled a rank-1 head's 63 other modes cc, trial 16)
    null = modes.sigma <= (modes.sigma.max(-1, keepdims=True) * modes.U.shape[1]
                           * np.finfo(np.float64).eps)
    mode_type[null] = UNDEFINED
    alpha = np.where(null, np.nan, _ratio(N * upos, N * upos + qcon))
    beta = np.where(null, np.nan, _ratio(N * vpos, N * vpos + kcon))
    return replace(
        stage1,
        energy=energy,
        frac=frac,
        head_type=head_type,
        sigma=modes.sigma,
        alpha=alpha,
        beta=beta,
        mode_energy=mode_energy,
        mode_type=mode_type,
        mode_coupling=1.0 - _ratio(per_mode.sum(-1), energy.sum(-1)),
        eff_rank=eff_rank,
        eff_rank_sigma=eff_rank_sigma,
        k90=k90,
    )


def pos_embed_cosine(pos_resid0: np.ndarray, pos_embed_patch_rows: np.ndarray) -> float:
    """Cosine between ``pos`` at the ``resid`` site of block 0 and the mean-centred patch rows
    of a learned absolute ``pos_embed`` (docs/method.md, "Validation" 3), both ``(T_patch, d)``.
    """
    a = np.asarray(pos_resid0, dtype=np.float64)
    b = np.asarray(pos_embed_patch_rows, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"pos at resid/block 0 has shape {a.shape} but pos_embed patch rows have {b.shape}"
        )
    b = b - b.mean(axis=0)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(np.sum(a * b) / denom) if denom > 0 else float("nan")
