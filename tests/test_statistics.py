"""Chance-corrected shares and jackknife intervals (docs/method.md, "Chance-corrected shares"
and "Uncertainty") against planted data whose population shares are known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import bfd
from bfd.core import decompose_layer, finalize_means, head_maps
from bfd.core.anova import Pass1State, select_tokens
from bfd.core.content import Pass2Plan
from bfd.core.heads import bi_orthogonal_modes
from bfd.core.uncertainty import HEAD_SHARES, LAYER_SHARES, Replicates, t_quantile

T, D, H, DH = 6, 6, 2, 3
S_IMG, S_INT = 0.6, 1.0  # sd of the image effect and of the token noise, per coordinate
BLOCKS = ("pp", "pc", "cp", "cc")


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny decompositions: torch's thread pool only adds spin time here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def population():
    """x[n, t] = P[t] + a[n] + e[n, t]; a, e Gaussian. Population shares in closed form.

    Per token the variance is S_P/T + d·S_IMG² + d·S_INT², of which the image effect holds
    d·S_IMG² + d·S_INT²/T (the noise's mean over positions) and the interaction the rest of
    the noise. Rows z_t = a + e_t of the content have E[z_tᵀ z_s] = (S_IMG² + δ_ts S_INT²) I,
    so (Isserlis) per image e_pc = T c0 ||P M||², e_cp = T c0 ||M Pᵀ||², and
    e_cc = Σ_ts c_ts² ((tr M)² + tr M²) + T² c0² ||M||².
    """
    rng = np.random.default_rng(0)
    P = 0.5 * rng.normal(size=(T, D))
    P -= P.mean(0)
    W = rng.normal(size=(3 * H * DH, D))
    maps = head_maps(W, H)
    v = (P**2).sum() / T + D * S_IMG**2 + D * S_INT**2
    shares = {"frac_pos": (P**2).sum() / T / v,
              "frac_img": D * (S_IMG**2 + S_INT**2 / T) / v,
              "frac_int": (T - 1) / T * D * S_INT**2 / v}
    c0 = S_IMG**2 + S_INT**2
    sum_c2 = T**2 * S_IMG**4 + T * (2 * S_IMG**2 * S_INT**2 + S_INT**4)
    energy = []
    for h in range(H):
        M = maps.scale * maps.A[h] @ maps.B[h].T
        energy.append([np.sum((P @ M @ P.T) ** 2), T * c0 * np.sum((P @ M) ** 2),
                       T * c0 * np.sum((M @ P.T) ** 2),
                       sum_c2 * (np.trace(M) ** 2 + np.trace(M @ M)) + T**2 * c0**2 * np.sum(M**2)])
    energy = np.array(energy)
    frac = energy / energy.sum(1, keepdims=True)
    shares |= {f"f_{b}": frac[:, i] for i, b in enumerate(BLOCKS)}
    return P, W, maps, shares


def draw(rng, P, N):
    return P + S_IMG * rng.normal(size=(N, 1, D)) + S_INT * rng.normal(size=(N, T, D))


def simulate(population, N, reps, seed):
    """Estimates and intervals of ``reps`` independent samples of N images, by share."""
    P, _, maps, _ = population
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {}
    for _ in range(reps):
        x = draw(rng, P, N)
        result = decompose_layer(lambda x=x: [(0, x)], maps, compute_dtype="float64")
        stats = dict(result.statistics)
        stats |= {f"f_{b}": result.frac[:, i] for i, b in enumerate(BLOCKS)}
        stats |= {f"f_{b}_adj": stats["frac_adj"][:, i] for i, b in enumerate(BLOCKS)}
        for share in (*LAYER_SHARES, *HEAD_SHARES):
            if share.startswith("frac_content"):
                continue
            for key in (share, f"{share}_lo", f"{share}_hi", f"{share}_se"):
                out.setdefault(key, []).append(np.asarray(stats[key], float))
    return {k: np.array(v) for k, v in out.items()}


def truth_of(population, share):
    return population[3][share.removesuffix("_adj")]


SHARES = ("frac_pos", "frac_img", "frac_int", *(f"f_{b}" for b in BLOCKS))


def test_corrected_shares_do_not_move_with_n(population):
    """Means over repetitions: the corrected shares hit the population value at N = 16, 64,
    256 within 3 standard errors of the mean; the raw positional shares sit far above it at
    N = 16 and fall towards it as N grows."""
    means = {}
    for N, reps in ((16, 120), (64, 60), (256, 30)):
        sim = simulate(population, N, reps, seed=N)
        for share in SHARES:
            truth = truth_of(population, share)
            adj = sim[f"{share}_adj"]
            sem = adj.std(0, ddof=1) / np.sqrt(reps)
            assert np.all(np.abs(adj.mean(0) - truth) < 3 * sem + 1e-12), (N, share)
            means[N, share] = sim[share].mean(0), sim[share].std(0, ddof=1) / np.sqrt(reps)
    for share in ("frac_pos", "f_pp", "f_pc", "f_cp"):
        (m16, s16), (m256, s256) = means[16, share], means[256, share]
        truth = truth_of(population, share)
        assert np.all(m16 - truth > 5 * s16), share  # biased upwards by the noise of pos
        assert np.all(m16 - m256 > 5 * np.hypot(s16, s256)), share  # and it moves with N


def test_interval_coverage(population):
    """95 % intervals of 200 samples of N = 64 contain the truth in 90-98 % of them: the
    population share for the corrected shares, the raw estimator's own mean at this N (its
    expectation, estimated from the repetitions) for the raw ones."""
    reps = 200
    sim = simulate(population, 64, reps, seed=7)
    for share in SHARES:
        for name, truth in ((f"{share}_adj", truth_of(population, share)),
                            (share, sim[share].mean(0))):
            inside = (sim[f"{name}_lo"] <= truth) & (truth <= sim[f"{name}_hi"])
            coverage = inside.mean(0)
            assert np.all((0.90 <= coverage) & (coverage <= 0.98)), (name, coverage)


def test_pure_noise_positional_share_is_zero_within_its_interval():
    rng = np.random.default_rng(3)
    N, T_noise = 64, 25
    x = rng.normal(size=(N, T_noise, 16))
    W = rng.normal(size=(3 * 16, 16))
    ds = bfd.analyze(x, W, 2)
    assert ds.frac_pos_adj_lo <= 0 <= ds.frac_pos_adj_hi
    assert abs(float(ds.frac_pos_adj)) < float(ds.frac_pos_adj_hi - ds.frac_pos_adj_lo)
    chance = (T_noise - 1) / (N * T_noise - 1)
    np.testing.assert_allclose(ds.frac_pos_chance, chance, rtol=0.1)
    np.testing.assert_allclose(ds.frac_pos, ds.frac_pos_chance, rtol=0.2)


def test_replicates_equal_decomposition_without_the_group():
    """Each jackknife replicate, built from the per-group states, equals the decomposition of
    the images outside that group (exactly, but for E_cc: the next test)."""
    rng = np.random.default_rng(4)
    N, G = 24, 8
    x = rng.normal(size=(N, T, D)) + 0.8 * rng.normal(size=(T, D))
    maps = head_maps(rng.normal(size=(3 * H * DH, D)), H)
    modes = bi_orthogonal_modes(maps)
    xt = select_tokens(torch.from_numpy(x), 0, "exclude")
    means = finalize_means(Pass1State.from_chunk(xt, 0, groups=G))
    p2 = Pass2Plan(means, maps, modes, "float64").chunk(xt, 0)
    rep = Replicates(means, p2, modes)
    for g in (0, 5):
        keep = np.flatnonzero(np.arange(N) % G != g)
        sub = decompose_layer(lambda keep=keep: [(keep, x[keep])], maps,
                              compute_dtype="float64", groups=G)
        est = rep.estimate(g)
        for name in ("frac_pos", "frac_img", "frac_int", "frac_pos_adj", "frac_int_adj"):
            np.testing.assert_allclose(est[name], sub.statistics[name], rtol=1e-10, err_msg=name)
        np.testing.assert_allclose(est["energy"][:, :3], sub.energy[:, :3], rtol=1e-9)
        np.testing.assert_allclose(est["energy"][:, 3], sub.energy[:, 3], rtol=0.01)


def test_a_replicates_e_cc_is_recentred_but_for_the_terms_in_both_shifts():
    """A replicate's E_cc kept the full sample's centring: always too high (its images
    centred on all images spread more than about their own means), by more than the
    replicates' own spread at small N, so a head near the cc / content-position boundary read
    stable in every replicate where the exact replicates flipped it (trial 16: stored
    head_type_stability 1, exact 0.375). Now the replicate's Grams are re-centred,
    ``K' = K + YᵀF + FᵀY + FᵀF``, exactly but for the terms in ``(YᵀF) ∘ (ZᵀG)``: equal to
    that brute force, and much closer to the exact replicate than before."""
    rng = np.random.default_rng(7)
    N, G = 16, 8
    # a strong image main effect: content correlated across positions, as in real images
    x = (rng.normal(size=(N, T, D)) + 2.0 * rng.normal(size=(N, 1, D))
         + 1.5 * rng.normal(size=(T, D)))
    maps = head_maps(rng.normal(size=(3 * H * DH, D)), H)
    modes = bi_orthogonal_modes(maps)
    xt = select_tokens(torch.from_numpy(x), 0, "exclude")
    means = finalize_means(Pass1State.from_chunk(xt, 0, groups=G))
    plan = Pass2Plan(means, maps, modes, "float64")
    p2 = plan.chunk(xt[:5], np.arange(5)) + plan.chunk(xt[5:], np.arange(5, N))
    rep = Replicates(means, p2, modes)
    c = x - x.mean(0)
    old_err, new_err = [], []
    for g in range(G):
        out = np.arange(N) % G != g
        n = out.sum()
        cc_exact, cc_brute, cc_old = [], [], []
        for h in range(H):
            U, V, so = modes.U[h], modes.V[h], np.outer(modes.sigma[h], modes.sigma[h])
            F, Gk = (c[~out].sum(0) / n) @ U, (c[~out].sum(0) / n) @ V
            Y, Z = c[out] @ U, c[out] @ V
            Kq, Kk = np.einsum("nti,ntj->nij", Y, Y), np.einsum("nti,ntj->nij", Z, Z)
            Aq, Ak = np.einsum("nti,tj->nij", Y, F), np.einsum("nti,tj->nij", Z, Gk)
            sym = lambda a: a + a.transpose(0, 2, 1)  # noqa: E731
            Kq2, Kk2 = Kq + sym(Aq) + F.T @ F, Kk + sym(Ak) + Gk.T @ Gk
            both = (so * sym(Aq) * sym(Ak)).sum()  # the terms left out
            cc_exact.append((so * Kq2 * Kk2).sum())
            cc_brute.append((so * Kq2 * Kk2).sum() - both)
            cc_old.append((so * Kq * Kk).sum())
        # the exact replicate is the decomposition of the images outside the group
        sub = decompose_layer(lambda out=out: [(np.flatnonzero(out), x[out])], maps,
                              compute_dtype="float64", groups=G)
        np.testing.assert_allclose(cc_exact, sub.energy[:, 3], rtol=1e-10)
        got = rep.estimate(g)["energy"][:, 3]
        np.testing.assert_allclose(got, cc_brute, rtol=1e-10)
        old_err.append(np.abs(np.array(cc_old) / cc_exact - 1))
        new_err.append(np.abs(got / cc_exact - 1))
    # before: up to 18 % too high here; now 2.2 %
    assert np.max(old_err) > 0.05 and np.max(new_err) < 0.2 * np.max(old_err)


@pytest.mark.parametrize("chunk_size", [1, 7])
def test_streaming_equals_in_memory_for_the_statistics(chunk_size):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(23, 9, 16)) + rng.normal(size=(9, 16))
    W = rng.normal(size=(3 * 16, 16))
    whole = bfd.analyze(x, W, 4, prefix_tokens=1, compute_dtype="float64")
    chunked = bfd.analyze(x, W, 4, prefix_tokens=1, compute_dtype="float64",
                          chunk_size=chunk_size)
    names = ["frac_pos_adj", "frac_pos_chance", "frac_pos_adj_se", "f_pp_adj_hi",
             "energy_adj", "frac_adj", "head_type_stability", "n_images_for_target"]
    for name in names:
        assert np.isfinite(whole[name].values).all(), name
    xr.testing.assert_allclose(chunked[names], whole[names], rtol=1e-10, atol=1e-12)


def test_without_jackknife_the_corrected_shares_stay_and_intervals_are_nan():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(20, T, D)) + rng.normal(size=(T, D))
    W = rng.normal(size=(3 * H * DH, D))
    with_g = bfd.analyze(x, W, H, compute_dtype="float64")
    without = bfd.analyze(x, W, H, compute_dtype="float64", jackknife_groups=0)
    for name in ("frac_pos_adj", "frac_img_adj", "energy_adj"):
        np.testing.assert_allclose(without[name], with_g[name], rtol=1e-10)
    assert np.isnan(without.frac_pos_adj_se) and np.isnan(without.f_cc_adj_lo).all()
    with pytest.raises(ValueError, match="multiple of 4"):
        bfd.analyze(x, W, H, jackknife_groups=6)


def test_bad_interval_options_are_one_line_errors():
    from bfd.tasks.decompose import DecomposeOptions

    with pytest.raises(ValueError, match="multiple of 4 that is >= 8; got 6") as err:
        DecomposeOptions(jackknife_groups=6)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="ci_target must be a number > 0"):
        DecomposeOptions(ci_target=0)


def test_a_head_without_energy_has_no_interval_and_does_not_count():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(32, T, D)) + rng.normal(size=(T, D))
    W = rng.normal(size=(3 * H * DH, D))
    W[:DH] = 0.0  # head 0 reads nothing on the query side: M_0 = 0
    ds = bfd.analyze(x, W, H, compute_dtype="float64")
    assert np.isnan(ds.head_type_stability[0]) and np.isnan(ds.f_cc_adj_lo[0])
    assert np.isfinite(ds.head_type_stability[1]) and np.isfinite(ds.f_cc_adj_lo[1])
    assert np.isfinite(ds.ci_halfwidth) and np.isfinite(ds.n_images_for_target)


def test_t_quantile_is_students():
    """The interval's t is Student's quantile at every df a jackknife gives (m − 1 of 1 and
    up): an expansion in 1/df is 11 % short at df 1 and 0.1 % at df 3."""
    from scipy.stats import t

    for df in (*range(1, 41), 63, 255, 1023):
        for p in (0.975, 0.9, 0.995):
            assert t_quantile(df, p) == pytest.approx(t.ppf(p, df), rel=1e-12), (df, p)
    assert np.isnan(t_quantile(0))
    with pytest.raises(ValueError):
        t_quantile(2.5)


def test_two_images_give_no_interval_and_three_give_finite_ones():
    """A replicate is the decomposition of the images outside its group: at N = 2 each holds
    one image, all of whose variation is positional (frac_pos 1 in every replicate), which
    gave intervals of width 0 (frac_pos_se 1e-16) that compare_runs called significant."""
    rng = np.random.default_rng(10)
    x = rng.normal(size=(3, T, D)) + rng.normal(size=(T, D))
    W = rng.normal(size=(3 * H * DH, D))
    two = bfd.analyze(x[:2], W, H, compute_dtype="float64")
    for share in LAYER_SHARES:
        assert np.isnan(two[f"{share}_se"]) and np.isnan(two[f"{share}_lo"]), share
    for share in HEAD_SHARES:
        assert np.isnan(two[f"{share}_hi"]).all(), share
    assert np.isnan(two.head_type_stability).all() and np.isnan(two.ci_halfwidth)
    assert np.isfinite(two.frac_pos)  # the point estimates stay
    three = bfd.analyze(x, W, H, compute_dtype="float64")
    assert float(three.frac_pos_se) > 1e-6 and np.isfinite(three.f_cc_hi).all()
    assert np.isfinite(three.head_type_stability).all()


def test_analyze_names_a_transposed_weight_and_a_single_position():
    rng = np.random.default_rng(11)
    d = 12
    x = rng.normal(size=(4, T, d))
    W = rng.normal(size=(3 * d, d))
    with pytest.raises(ValueError, match=r"qkv_weight must be \(3\*d_attn, d\) with d=12.*"
                       r"got shape \(12, 36\) \(transposed\?\)"):
        bfd.analyze(x, W.T, 3)
    # a (d, d) weight (another projection): its rows give d_attn = 4, said beside num_heads
    with pytest.raises(ValueError, match=r"d_attn=4 \(a third of the rows of qkv_weight, "
                       r"shape \(12, 12\)\); got num_heads=3"):
        bfd.analyze(x, W[:d], 3)
    with pytest.raises(ValueError, match="at least 2 positions"):
        bfd.analyze(x, W, 3, prefix_tokens=T - 1)
    assert np.isfinite(bfd.analyze(x, W, 3, prefix_tokens=T - 2).frac_pos)
