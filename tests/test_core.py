"""bfd.core against the literal brute force of tests/brute.py, at toy and real ViT shapes."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import xarray as xr
from brute import brute_heads

import bfd
from bfd.core import bi_orthogonal_modes, head_maps

NUMERIC = ("energy", "frac", "sigma", "alpha", "beta", "mode_energy", "eff_rank",
           "eff_rank_sigma", "mu", "pos", "frac_pos", "frac_img", "frac_int")
LABELS = ("head_type", "mode_type", "k90")


def random_case(rng, N, T_total, d, H, mean_scale=0.5, dh=None):
    """Activations with a positional signal and a nonzero mean, and a qkv weight."""
    pos = rng.normal(size=(T_total, d))
    x = mean_scale * rng.normal(size=d) + 0.7 * pos + rng.normal(size=(N, T_total, d))
    d_attn = d if dh is None else dh * H
    W = rng.normal(size=(3 * d_attn, d)) / np.sqrt(d)
    return x, W


def assert_matches_brute(ds, ref, rtol):
    for name in NUMERIC:
        np.testing.assert_allclose(ds[name].values, ref[name], rtol=rtol, atol=0,
                                   err_msg=name)
    # mode_coupling = 1 - Σe/ΣE is near zero, so its own relative error is not meaningful;
    # the measured ratio Σe/ΣE is held to the same relative tolerance instead.
    np.testing.assert_allclose(1 - ds.mode_coupling.values, 1 - ref["mode_coupling"],
                               rtol=rtol, atol=0)
    for name in LABELS:
        np.testing.assert_array_equal(ds[name].values, ref[name], err_msg=name)


@pytest.mark.parametrize("compute_dtype", ["float64", "float32"])
def test_toy_shapes_match_brute_force(compute_dtype):
    rng = np.random.default_rng(1)
    x, W = random_case(rng, N=9, T_total=13, d=24, H=3)
    ds = bfd.analyze(x.astype(np.float32), W, 3, prefix_tokens=1, compute_dtype=compute_dtype,
                     chunk_size=4)
    ref = brute_heads(x.astype(np.float32)[:, 1:], W, 3)
    assert_matches_brute(ds, ref, rtol=1e-9 if compute_dtype == "float64" else 1e-6)


@functools.cache
def real_vit_case() -> tuple[np.ndarray, np.ndarray, dict]:
    """ViT-S/16 activations and weights, and their brute force (one for both dtypes: the
    same inputs)."""
    rng = np.random.default_rng(2)
    x, W = random_case(rng, N=5, T_total=197, d=384, H=6)
    x = x.astype(np.float32)
    return x, W, brute_heads(x[:, 1:], W, 6, explicit_modes=False)


@pytest.mark.parametrize("compute_dtype", ["float64", "float32"])
def test_real_vit_shape_matches_brute_force(compute_dtype):
    """ViT-S/16: T=196 patches + CLS, d=384, H=6, small N."""
    x, W, ref = real_vit_case()
    ds = bfd.analyze(x, W, 6, prefix_tokens=1, compute_dtype=compute_dtype)
    assert_matches_brute(ds, ref, rtol=1e-9 if compute_dtype == "float64" else 1e-6)


@pytest.mark.parametrize("block_images", [1, 2])
def test_passes_in_blocks_match_brute_force(monkeypatch, block_images):
    """Both passes convert and sum a chunk a few images at a time on the CPU (a last block
    shorter than the others included): the results are those of the brute force."""
    import bfd.core.anova

    rng = np.random.default_rng(1)
    x, W = random_case(rng, N=9, T_total=13, d=24, H=3)
    x = x.astype(np.float32)
    monkeypatch.setattr(bfd.core.anova, "BLOCK_ELEMENTS", block_images * 12 * 24)
    ds = bfd.analyze(x, W, 3, prefix_tokens=1, compute_dtype="float64", chunk_size=5)
    assert_matches_brute(ds, brute_heads(x[:, 1:], W, 3), rtol=1e-9)
    assert ds.ss_identity_residual < 1e-12


def test_explicit_scale_and_narrow_heads():
    """d_attn != d (dh*H < d) and a non-default scale."""
    rng = np.random.default_rng(3)
    x, W = random_case(rng, N=6, T_total=10, d=20, H=2, dh=4)
    ds = bfd.analyze(x, W, 2, scale=0.3, compute_dtype="float64")
    assert_matches_brute(ds, brute_heads(x, W, 2, scale=0.3), rtol=1e-9)


def test_factored_svd_equals_dense():
    rng = np.random.default_rng(4)
    W = rng.normal(size=(3 * 48, 48))
    maps = head_maps(W, 4)
    modes = bi_orthogonal_modes(maps)
    for h in range(4):
        M = maps.scale * maps.A[h] @ maps.B[h].T
        recon = (modes.U[h] * modes.sigma[h]) @ modes.V[h].T
        np.testing.assert_allclose(recon, M, atol=1e-12)
        np.testing.assert_allclose(modes.U[h].T @ modes.U[h], np.eye(12), atol=1e-12)
        np.testing.assert_allclose(modes.V[h].T @ modes.V[h], np.eye(12), atol=1e-12)
        peak = modes.U[h][np.abs(modes.U[h]).argmax(0), np.arange(12)]
        assert (peak > 0).all()
    assert np.all(np.diff(modes.sigma, axis=1) <= 0)


def test_quality_checks_at_rounding_level():
    rng = np.random.default_rng(5)
    x, W = random_case(rng, N=16, T_total=50, d=32, H=4, mean_scale=5.0)
    ds = bfd.analyze(x.astype(np.float32), W, 4, prefix_tokens=1, chunk_size=5)
    assert ds.ss_identity_residual < 1e-12
    assert ds.ortho_residual < 1e-12
    assert ds.logit_residual < 1e-12
    np.testing.assert_allclose(ds.frac_pos + ds.frac_img + ds.frac_int, 1.0, rtol=1e-12)
    np.testing.assert_allclose(ds.frac.sum("block"), 1.0, rtol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_streaming_equals_in_memory(chunk_size):
    rng = np.random.default_rng(6)
    x, W = random_case(rng, N=23, T_total=17, d=32, H=4)
    x = x.astype(np.float32)
    whole = bfd.analyze(x, W, 4, prefix_tokens=1, compute_dtype="float64")
    chunked = bfd.analyze(x, W, 4, prefix_tokens=1, compute_dtype="float64",
                          chunk_size=chunk_size)
    xr.testing.assert_allclose(chunked, whole, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(chunked.head_type, whole.head_type)


def test_stage1_only_and_explicit_indices():
    """Stage 1 alone (no heads) equals Stage 1 of the full decomposition; chunks given as
    explicit index arrays equal contiguous ones."""
    from bfd.core import decompose_layer

    rng = np.random.default_rng(7)
    x, W = random_case(rng, N=12, T_total=9, d=16, H=2)
    maps = head_maps(W, 2)
    full = decompose_layer(lambda: [(0, x[:5]), (5, x[5:])], maps, prefix_tokens=1)
    idx = np.arange(12)
    stage1 = decompose_layer(lambda: [(idx[:7], x[:7]), (idx[7:], x[7:])], None, prefix_tokens=1)
    assert stage1.energy is None and stage1.sigma is None
    for name in ("frac_pos", "frac_img", "frac_int", "ss_total", "pos_split_half_r",
                 "shuffle_frac_pos"):
        np.testing.assert_allclose(getattr(stage1, name), getattr(full, name), rtol=1e-12)
    np.testing.assert_allclose(stage1.pos, full.pos, rtol=1e-12)


def test_one_thread_on_overlapping_threads_leaves_the_thread_count_as_it_was():
    """Blocks of one_thread that overlap on two threads (decompose tasks in one process) must
    leave torch's count as it was, for every thread that starts later too: a thread that took 1
    would run its forwards on one core and give other float32 bits (a flow's stored activations
    then differed from a direct forward)."""
    import threading

    import torch

    from bfd.core.heads import one_thread

    def fresh_thread_count() -> int:
        got = []
        t = threading.Thread(target=lambda: got.append(torch.get_num_threads()))
        t.start()
        t.join()
        return got[0]

    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        counts = {}

        def a():
            with one_thread():
                a_in.set()
                b_in.wait(10)
            a_out.set()

        def b():
            a_in.wait(10)
            counts["b_first_use"] = torch.get_num_threads()  # first use, inside a's block
            with one_thread():
                counts["b_inside"] = torch.get_num_threads()
                b_in.set()
                a_out.wait(10)
            counts["b_after"] = torch.get_num_threads()

        threads = [threading.Thread(target=f) for f in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert counts == {"b_first_use": 1, "b_inside": 1, "b_after": 2}
        assert torch.get_num_threads() == 2
        assert fresh_thread_count() == 2
    finally:
        torch.set_num_threads(saved)


def test_one_thread_nested_on_one_thread_stays_on_one_until_the_outermost_ends():
    """A block inside another on the same thread (the modes' SVD inside a one-thread decompose
    task) must leave the outer block on one thread; the outermost restores the count."""
    import torch

    from bfd.core.heads import one_thread

    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            with one_thread():
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_states_added_in_place_equal_their_sum_bitwise():
    """``a += b`` (the local reduction of the dask passes) and ``a + b`` give the very sums of
    each field (the larger logit residual; the same group count) for both passes' states,
    and leave ``b`` (and, for ``+``, ``a``) as they were."""
    import copy
    import dataclasses

    import torch

    from bfd.core import Pass2Plan, bi_orthogonal_modes, finalize_means, pass1_chunk

    rng = np.random.default_rng(3)
    x, W = random_case(rng, 10, 9, 8, 2)
    x = torch.from_numpy(x)
    first = dict(index=np.arange(0, 6), groups=8, prefix_tokens=1)
    second = dict(index=np.arange(6, 10), groups=8, prefix_tokens=1)
    maps = head_maps(W, 2)
    p1 = [pass1_chunk(x[:6], **first), pass1_chunk(x[6:], **second)]
    total = p1[0] + p1[1]
    plan = Pass2Plan(finalize_means(total), maps, bi_orthogonal_modes(maps))
    chunks = [x[:6, 1:], x[6:, 1:]]
    p2 = [plan.chunk(chunks[0], np.arange(6)), plan.chunk(chunks[1], np.arange(6, 10))]
    for states, again in ((p1, [pass1_chunk(x[:6], **first), pass1_chunk(x[6:], **second)]),
                          (p2, [plan.chunk(chunks[0], np.arange(6)),
                                plan.chunk(chunks[1], np.arange(6, 10))])):
        operands = copy.deepcopy(states)
        expected = {}
        for f in dataclasses.fields(states[0]):
            a, b = (getattr(s, f.name) for s in states)
            expected[f.name] = (a if f.name == "groups" else np.fmax(a, b)
                                if f.name == "logit_residual" else a + b)
        summed = states[0] + states[1]
        left, right = again
        right_before = copy.deepcopy(right)
        left += right
        for f in dataclasses.fields(summed):
            for result in (summed, left):
                np.testing.assert_array_equal(getattr(result, f.name), expected[f.name],
                                              err_msg=f.name)
            np.testing.assert_array_equal(getattr(right, f.name),
                                          getattr(right_before, f.name), err_msg=f.name)
            for state, before in zip(states, operands, strict=True):
                np.testing.assert_array_equal(getattr(state, f.name), getattr(before, f.name),
                                              err_msg=f.name)
