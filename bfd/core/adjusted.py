"""Chance-corrected shares (docs/method.md, "Chance-corrected shares").

The raw shares count the estimation noise of ``pos`` as positional signal, so their
expectation moves with the number of images N. The estimators here remove that noise:

- Stage 1: variance components of the two-way layout (images random, positions fixed) from its
  sums of squares, as in omega-squared: ``SS_int / (N − 1)`` estimates what the noise of
  ``pos`` adds to ``SS_pos``.
- Stage 2: ``pos`` enters the energies quadratically (``E_pc``, ``E_cp``) or quartically
  (``E_pp``). A product of estimates from disjoint image groups is unbiased where a power of
  one estimate is not. The images fall into 4 quarters (``index mod 4``); ``E_pc`` and
  ``E_cp`` take the positional Gram from pairs of distinct quarters, ``E_pp`` takes its two
  Grams from the three splits of the quarters into two pairs. ``E_cc`` has no ``pos``; its
  content is centred on the sample means, which shrinks it by ``((N − 1)/N)²`` for Gaussian
  content, and that factor is undone.

Every function works on the statistics of one (sub)sample, so the jackknife
(``bfd.core.uncertainty``) evaluates the same code on each replicate.
"""

from __future__ import annotations

import numpy as np

QUARTER_SPLITS = (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2)))


def _div(num, den):
    num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den != 0)


def stage1_shares(n: float, T: int, ss_pos, ss_img, ss_int) -> dict[str, np.ndarray]:
    """Raw and corrected Stage 1 shares of one (sub)sample of n images and T positions.

    Per token, the population variance is ``v_pos + v_img + v_int`` with (expectations under
    independent images, ``E SS_pos = N S_P + σ²_W``, ``E SS_img = T (N−1) σ²_I``,
    ``E SS_int = (N−1) σ²_W``):

        v_int = SS_int / ((N − 1) T)
        v_pos = (SS_pos − SS_int / (N − 1)) / (N T)
        v_img = SS_img / ((N − 1) T)

    ``frac_*_adj = v_* / (v_pos + v_img + v_int)``; ``frac_pos_adj`` may be negative (it is
    unbiased, not clipped). ``frac_pos_chance = SS_int / ((N − 1) SS_total)`` is the raw share
    that the noise of ``pos`` alone gives.
    """
    ss_pos, ss_img, ss_int = (np.asarray(a, float) for a in (ss_pos, ss_img, ss_int))
    ss_total = ss_pos + ss_img + ss_int
    v_int = _div(ss_int, (n - 1) * T)
    v_pos = _div(ss_pos - _div(ss_int, n - 1), n * T)
    v_img = _div(ss_img, (n - 1) * T)
    v = v_pos + v_img + v_int
    return {
        "frac_pos": _div(ss_pos, ss_total),
        "frac_img": _div(ss_img, ss_total),
        "frac_int": _div(ss_int, ss_total),
        "frac_content": _div(ss_img + ss_int, ss_total),
        "frac_pos_adj": _div(v_pos, v),
        "frac_img_adj": _div(v_img, v),
        "frac_int_adj": _div(v_int, v),
        "frac_content_adj": _div(v_img + v_int, v),
        "frac_pos_chance": _div(ss_int, (n - 1) * ss_total),
    }


def _gram(Y: np.ndarray, X: np.ndarray | None = None) -> np.ndarray:
    """``Σ_t Y[h, t]ᵀ X[h, t]``, ``(H, dh, dh)``.

    numpy's stacked matmul (its OpenBLAS, one thread at these sizes): a float64 Gram of a
    ViT-S/16 layer's stacked heads took 0.37-0.41 ms against 0.9-1.1 ms in torch (MKL on
    this AMD CPU); the jackknife (``bfd.core.uncertainty``) computes 87 of them per layer.
    No slowdown beside torch's threads: right after a threaded torch GEMM without
    ``OMP_WAIT_POLICY=PASSIVE`` as well. (An earlier numpy version here, beside torch's
    spinning OpenMP workers, once took 100x longer; torch then ran these on one thread.)
    """
    Y = np.asarray(Y)
    X = Y if X is None else np.asarray(X)
    return np.matmul(np.swapaxes(Y, -1, -2), X)


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.transpose(0, 2, 1))


def _pair(so: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``Σ_ij σ_i σ_j a[i, j] b[i, j]`` per head."""
    return (so * a * b).sum((1, 2))


def energies(n: float, so, Pq, Pk, K_q, K_k, KK, cc_extra=0.0) -> np.ndarray:
    """Raw block energies ``(H, 4)`` over (pp, pc, cp, cc) of one (sub)sample.

    Args:
        n: images.
        so: ``σ_i σ_j``, ``(H, dh, dh)``.
        Pq, Pk: the Grams of ``pos`` projected on the query and key modes, ``_gram(Y)``
            and ``_gram(X)`` of ``Y, X (H, T, dh)``.
        K_q, K_k, KK: the content Grams of pass 2, ``(H, dh, dh)``.
        cc_extra: added to ``E_cc`` of each head, ``(H,)``: a jackknife replicate's
            re-centring of its content (``bfd.core.uncertainty``).
    """
    return np.stack([n * _pair(so, Pq, Pk), _pair(so, Pq, K_k), _pair(so, K_q, Pk),
                     (so * KK).sum((1, 2)) + cc_extra], axis=-1)


def energies_adj(n: float, so, G_q: dict, G_k: dict, K_q, K_k, KK,
                 cc_extra=0.0) -> np.ndarray:
    """Corrected block energies ``(H, 4)`` on the scale of the raw ones (n images).

    Args:
        n: images.
        so: ``σ_i σ_j``.
        G_q, G_k: ``sym(Y_aᵀ Y_b)`` of each pair ``(a, b)``, ``a < b``, of non-empty
            quarters (``Y_a``: ``pos`` estimated from quarter a's images, projected), query
            and key side: unbiased for ``(pos U)ᵀ(pos U)``, since distinct quarters hold
            independent images. ``E_pp_adj`` needs all 4 quarters (NaN otherwise).
        K_q, K_k, KK: the content Grams of pass 2.
        cc_extra: as ``energies``.
    """
    nan = np.full(so.shape, np.nan)
    pair_q = sum(G_q.values()) / len(G_q) if G_q else nan
    pair_k = sum(G_k.values()) / len(G_k) if G_k else nan
    if len(G_q) < 6:
        e_pp = np.full(so.shape[0], np.nan)
    else:
        e_pp = sum(_pair(so, G_q[a], G_k[b]) + _pair(so, G_q[b], G_k[a])
                   for a, b in QUARTER_SPLITS) / (2 * len(QUARTER_SPLITS))
    shrink = (n - 1) / n
    return np.stack([n * e_pp,
                     n * _pair(so, pair_q, K_k) / (n - 1),
                     n * _pair(so, K_q, pair_k) / (n - 1),
                     ((so * KK).sum((1, 2)) + cc_extra) / shrink**2], axis=-1)
