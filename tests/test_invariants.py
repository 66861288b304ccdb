"""docs/method.md "Invariants every implementation must satisfy"."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.stats import ortho_group

import bfd

N, T, D, H = 12, 21, 24, 3
# The split-half and shuffle controls are seeded random draws tied to image index and token
# order, so they are invariant in distribution only; every estimated quantity is exact.
RANDOM_CONTROLS = ["pos_split_half_r", "shuffle_frac_pos"]
# The jackknife groups and the quarters of the corrected energies are images by index, so
# the intervals and the corrected energies are, like the controls, invariant in distribution.
GROUPED = ("energy_adj", "frac_adj", "head_type_stability", "ci_halfwidth",
           "n_images_for_target")


def by_group(ds):
    return [n for n in ds.data_vars
            if n in GROUPED or n.endswith(("_se", "_lo", "_hi"))]


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    x = 0.3 + rng.normal(size=(T, D)) + rng.normal(size=(N, T, D))
    W = rng.normal(size=(3 * D, D)) / np.sqrt(D)
    return x, W, analyze(x, W)


def analyze(x, W):
    return bfd.analyze(x, W, H, compute_dtype="float64")


def estimates(ds):
    return ds.drop_vars(RANDOM_CONTROLS + ["logit_residual"] + by_group(ds))


def test_permuting_images_changes_nothing(case):
    x, W, ref = case
    perm = np.random.default_rng(1).permutation(N)
    xr.testing.assert_allclose(estimates(analyze(x[perm], W)), estimates(ref), rtol=1e-10)


def test_permuting_positions_permutes_pos_only(case):
    x, W, ref = case
    perm = np.random.default_rng(2).permutation(T)
    ds = analyze(x[:, perm], W)
    np.testing.assert_allclose(ds.pos.values, ref.pos.values[perm], rtol=1e-10)
    for name in ("energy", "frac", "mode_energy", "alpha", "beta", "sigma", "frac_pos",
                 "pos_split_half_r"):
        np.testing.assert_allclose(ds[name], ref[name], rtol=1e-10, err_msg=name)
    np.testing.assert_array_equal(ds.head_type, ref.head_type)


def test_scaling_scales_energies_by_lambda_to_the_fourth(case):
    x, W, ref = case
    lam = 2.5
    ds = analyze(lam * x, W)
    np.testing.assert_allclose(ds.energy, lam**4 * ref.energy, rtol=1e-10)
    np.testing.assert_allclose(ds.mode_energy, lam**4 * ref.mode_energy, rtol=1e-10)
    np.testing.assert_allclose(ds.ss_total, lam**2 * ref.ss_total, rtol=1e-10)
    for name in ("frac", "frac_pos", "frac_img", "frac_int", "alpha", "beta", "sigma",
                 "eff_rank", "eff_rank_sigma", "k90"):
        np.testing.assert_allclose(ds[name], ref[name], rtol=1e-10, err_msg=name)


def test_orthogonal_change_of_basis_changes_nothing(case):
    """x -> x R, A -> Rᵀ A, B -> Rᵀ B, i.e. the qkv weight W -> W R."""
    x, W, ref = case
    R = ortho_group.rvs(D, random_state=3)
    ds = analyze(x @ R, W @ R)
    for name in ("energy", "frac", "mode_energy", "sigma", "alpha", "beta", "frac_pos",
                 "frac_img", "frac_int", "mode_coupling", "eff_rank", "k90"):
        np.testing.assert_allclose(ds[name], ref[name], rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(ds.pos.values, ref.pos.values @ R, atol=1e-10)


def test_float32_storage_is_enough(case):
    x, W, ref = case
    ds = bfd.analyze(x.astype(np.float32), W, H)
    for name in ("frac", "frac_pos", "alpha", "beta"):
        np.testing.assert_allclose(ds[name], ref[name], rtol=1e-5, err_msg=name)
