"""Planted ground truth (docs/method.md, "Validation"): x = P_true[t] + z[n, t] with the positional
signal and the content in orthogonal coordinate blocks, and heads built to read one or both."""

from __future__ import annotations

import numpy as np
import pytest

import bfd

N, T, D_POS, D_CON, DH = 64, 25, 8, 24, 4
D = D_POS + D_CON


def planted_tokens(rng, centered=True):
    """Positional signal in coordinates [0, 8), content in [8, 32).

    With ``centered`` the content is centred over images at every position, so the
    estimated pos is exactly P_true minus its mean and the content exactly z: the split is
    then exact, not just approximate.
    """
    P = np.zeros((T, D))
    P[:, :D_POS] = 3 * rng.normal(size=(T, D_POS))
    z = np.zeros((N, T, D))
    z[:, :, D_POS:] = rng.normal(size=(N, T, D_CON))
    if centered:
        z -= z.mean(axis=0, keepdims=True)
    return P[None] + z


def read_in(rng, span):
    """A (d, dh) read-in map whose columns lie in a coordinate span."""
    R = np.zeros((D, DH))
    R[span] = rng.normal(size=(len(range(D)[span]), DH))
    return R


POS, CON = slice(0, D_POS), slice(D_POS, D)


def qkv(heads):
    """Fused timm qkv weight (3*d_attn, d) from per-head (A, B) pairs; V rows are zeros."""
    A = np.concatenate([a.T for a, _ in heads])
    B = np.concatenate([b.T for _, b in heads])
    return np.concatenate([A, B, np.zeros_like(A)])


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    x = planted_tokens(rng)
    heads = {
        "pp": (read_in(rng, POS), read_in(rng, POS)),
        "cc": (read_in(rng, CON), read_in(rng, CON)),
        "cp": (read_in(rng, CON), read_in(rng, POS)),
        "pc": (read_in(rng, POS), read_in(rng, CON)),
    }
    ds = bfd.analyze(x, qkv(list(heads.values())), len(heads), compute_dtype="float64")
    return x, heads, ds


def test_pure_heads_have_their_type(planted):
    _, _, ds = planted
    assert list(ds.head_type.values) == [
        "position-position", "content-content", "content-position", "content-position"]
    np.testing.assert_allclose(ds.frac.sel(block="pp")[0], 1.0, atol=1e-12)
    np.testing.assert_allclose(ds.frac.sel(block="cc")[1], 1.0, atol=1e-12)
    np.testing.assert_allclose(ds.frac.sel(block="cp")[2], 1.0, atol=1e-12)
    np.testing.assert_allclose(ds.frac.sel(block="pc")[3], 1.0, atol=1e-12)


def test_pure_heads_modes_and_loadings(planted):
    _, _, ds = planted
    np.testing.assert_allclose(ds.alpha[0], 1.0, atol=1e-12)
    np.testing.assert_allclose(ds.beta[0], 1.0, atol=1e-12)
    np.testing.assert_allclose(ds.alpha[1], 0.0, atol=1e-12)
    np.testing.assert_allclose(ds.alpha[2], 0.0, atol=1e-12)
    np.testing.assert_allclose(ds.beta[2], 1.0, atol=1e-12)
    assert (ds.mode_type[0] == "pp").all() and (ds.mode_type[1] == "cc").all()
    assert (ds.mode_type[2] == "cp").all() and (ds.mode_type[3] == "pc").all()


@pytest.mark.parametrize("weight", [0.2, 0.5, 0.8])
def test_mixtures_come_out_in_proportion(planted, weight):
    """M = a·M_pos + b·M_con: with disjoint spans the cross terms vanish, so each block's
    energy is that of the pure head scaled by a² or b², and the fractions follow."""
    x, heads, pure = planted
    a, b = np.sqrt(weight), np.sqrt(1 - weight)
    (Ap, Bp), (Ac, Bc) = heads["pp"], heads["cc"]
    # concatenating factors sums the bilinear forms; dh doubles, so fix the scale to match
    mixed = (np.concatenate([a * Ap, b * Ac], 1), np.concatenate([a * Bp, b * Bc], 1))
    ds = bfd.analyze(x, qkv([mixed]), 1, scale=DH**-0.5, compute_dtype="float64")
    e_pp = weight**2 * float(pure.energy.sel(block="pp")[0])
    e_cc = (1 - weight) ** 2 * float(pure.energy.sel(block="cc")[1])
    np.testing.assert_allclose(ds.frac.sel(block="pp")[0], e_pp / (e_pp + e_cc), rtol=1e-10)
    np.testing.assert_allclose(ds.frac.sel(block="cc")[0], e_cc / (e_pp + e_cc), rtol=1e-10)
    expected = "position-position" if e_pp > e_cc else "content-content"
    assert ds.head_type.values[0] == expected


def test_uncentered_content_is_approximately_separated():
    """Without the exact centring, finite-N noise leaks into pos, but the types stand."""
    rng = np.random.default_rng(1)
    x = planted_tokens(rng, centered=False)
    heads = [(read_in(rng, POS), read_in(rng, POS)), (read_in(rng, CON), read_in(rng, CON))]
    ds = bfd.analyze(x.astype(np.float32), qkv(heads), 2)
    assert list(ds.head_type.values) == ["position-position", "content-content"]
    assert ds.frac.sel(block="pp")[0] > 0.95 and ds.frac.sel(block="cc")[1] > 0.95


def test_validation_controls_on_planted_structure():
    rng = np.random.default_rng(2)
    x = planted_tokens(rng, centered=False)
    heads = [(read_in(rng, POS), read_in(rng, POS))]
    ds = bfd.analyze(x, qkv(heads), 1)
    # each half's pos = signal (variance 9 on 8 coords) + noise (variance 1/(N/2) on 24):
    # the expected correlation is 72 / (72 + 24 * 2 / N)
    expected_r = 72 / (72 + 24 * 2 / N)
    assert abs(float(ds.pos_split_half_r) - expected_r) < 0.005
    chance = (T - 1) / (N * T - 1)
    assert ds.frac_pos > 0.5
    assert 0.6 * chance < ds.shuffle_frac_pos < 1.5 * chance

    noise = rng.normal(size=(N, T, D))
    dn = bfd.analyze(noise, qkv(heads), 1)
    assert abs(float(dn.pos_split_half_r)) < 0.1  # no positional structure: halves disagree
    assert 0.6 * chance < dn.frac_pos < 1.5 * chance


def test_pos_embed_cosine():
    rng = np.random.default_rng(3)
    pe = rng.normal(size=(T, D))
    resid0 = pe[None] + 0.5 * rng.normal(size=(N, T + 1, D))[:, 1:]
    resid0 = np.concatenate([rng.normal(size=(N, 1, D)), resid0], axis=1)
    heads = [(read_in(rng, POS), read_in(rng, POS))]
    ds = bfd.analyze(resid0, qkv(heads), 1, prefix_tokens=1, pos_embed=pe, resid0=resid0)
    assert ds.pos_embed_cos > 0.95


def test_shuffle_control_falls_to_one_minus_frac_img_over_n():
    """Images with their own means (planted frac_img near 0.9): shuffling tokens within each
    image leaves those means, so the control's expectation is (1 − frac_img)/N (the level the
    dashboard and `bfd plot` draw), ten times below (T − 1)/(N·T − 1)."""
    rng = np.random.default_rng(0)
    N, T, d, H = 20, 17, 8, 2
    x = 3 * rng.normal(size=(N, 1, d)) + rng.normal(size=(N, T, d))
    W = rng.normal(size=(3 * d, d)) / np.sqrt(d)
    runs = [bfd.analyze(x, W, H, prefix_tokens=1, seed=seed) for seed in range(8)]
    shuffled = np.array([float(r["shuffle_frac_pos"]) for r in runs])
    frac_img = float(runs[0]["frac_img"])
    assert frac_img > 0.85
    expected = (1 - frac_img) / N
    assert abs(shuffled.mean() - expected) < 4 * shuffled.std(ddof=1) / np.sqrt(len(runs))
    assert shuffled.max() < 0.2 * (T - 2) / (N * (T - 1) - 1)
