"""The logit check against the model itself (docs/method.md, "Validation" 1; docs/checks.md): it
passes on the model's own q and k, fails for each way M can be built wrong, and the key-side
bias shares equal a literal computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bfd import capture, models
from bfd.core import finalize_means, head_maps, pass1_chunk
from bfd.core.heads import HeadMaps
from bfd.core.model_check import model_logit_check
from bfd.storage import Store, open_activations, read_logit_check, read_model_tensors
from bfd.tasks import decompose as decompose_tasks
from bfd.tasks.decompose import DecomposeOptions, decompose_site_layer
from bfd.tasks.extract import ExtractConfig, extract_shard, prepare_run

# timm's own test ViT (width 64, depth 6, 2 heads of 32): at 32 px, 1 cls + 2x2 patches
TINY, IMG, LAYERS, PREFIX = "test_vit", 32, (0, 3, 5), 1


def with_random_biases(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """timm initialises qkv biases to zero; the bias terms need non-zero ones."""
    g = torch.Generator().manual_seed(seed)
    for block in model.blocks:
        b = block.attn.qkv.bias
        b.copy_(torch.randn(b.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def captured():
    model, info = models.load_model(TINY, "random", img_size=IMG, seed=0)
    with_random_biases(model)
    images = torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    return model, info, capture.capture_logit_check(model, images, LAYERS)


def true_maps(model, layer: int) -> HeadMaps:
    attn = model.blocks[layer].attn
    return head_maps(attn.qkv.weight, attn.num_heads, attn.scale, attn.qkv.bias)


def check(cap, i: int, maps: HeadMaps):
    x = cap["x"][i]
    means = finalize_means(pass1_chunk(x, 0, prefix_tokens=PREFIX))
    return model_logit_check(x, cap["q"][i], cap["k"][i], float(cap["scale"][i]), maps, means,
                             prefix_tokens=PREFIX)


def test_attention_output_confirms_q_k_and_scale(captured):
    model, info, cap = captured
    assert cap["q"].shape == (3, 3, info.num_heads, info.num_tokens, info.head_dim)
    assert cap["x"].shape == (3, 3, info.num_tokens, info.width)
    np.testing.assert_array_equal(cap["scale"], [info.head_dim**-0.5] * 3)
    assert (cap["attn_out_residual"] < 1e-6).all()
    for module in model.modules():  # hooks only: nothing left on the model
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_attention_output_catches_a_scale_the_model_does_not_apply():
    """timm's fused kernel applies 1/sqrt(dh) and ignores ``attn.scale``: an ``attn.scale``
    that differs from it is not the model's logit scale, and the check says so."""
    model, _ = models.load_model(TINY, "random", img_size=IMG, seed=0)
    attn = model.blocks[LAYERS[1]].attn
    attn.fused_attn = True
    attn.scale = 2 * attn.scale
    images = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    res = capture.capture_logit_check(model, images, LAYERS)["attn_out_residual"]
    assert res[0] < 1e-6 and res[1] > 1e-2 and res[2] < 1e-6


def test_true_maps_pass(captured):
    model, _, cap = captured
    for i, layer in enumerate(LAYERS):
        assert check(cap, i, true_maps(model, layer)).residual < 1e-4


def _wrong_rows(W, b, H, s):  # keys read from the value rows
    d_attn = W.shape[0] // 3
    W = W.clone()
    W[d_attn:2 * d_attn] = W[2 * d_attn:]
    return head_maps(W, H, s, b)


def _wrong_scale(W, b, H, s):  # 1/dh instead of 1/sqrt(dh)
    return head_maps(W, H, s**2, b)


def _wrong_split(W, b, H, s):  # heads interleaved instead of contiguous blocks of rows
    d_attn = W.shape[0] // 3
    dh = d_attn // H
    order = torch.arange(d_attn).reshape(dh, H).T.reshape(-1)
    rows = torch.cat([order, d_attn + order, 2 * d_attn + torch.arange(d_attn)])
    return head_maps(W[rows], H, s, b[rows])


def _query_key_swapped(W, b, H, s):
    d_attn = W.shape[0] // 3
    rows = torch.cat([torch.arange(d_attn, 2 * d_attn), torch.arange(d_attn),
                      torch.arange(2 * d_attn, 3 * d_attn)])
    return head_maps(W[rows], H, s, b[rows])


@pytest.mark.parametrize("bug", [_wrong_rows, _wrong_scale, _wrong_split, _query_key_swapped])
def test_each_wrong_m_fails(captured, bug):
    model, _, cap = captured
    for i, layer in enumerate(LAYERS):
        attn = model.blocks[layer].attn
        maps = bug(attn.qkv.weight, attn.qkv.bias, attn.num_heads, attn.scale)
        assert check(cap, i, maps).residual > 1e-2, bug.__name__


def test_bias_shares_equal_literal_sums(captured):
    model, info, cap = captured
    i, layer = 1, LAYERS[1]
    attn = model.blocks[layer].attn
    W = attn.qkv.weight.double().numpy()
    b = attn.qkv.bias.double().numpy()
    H, dh, s = info.num_heads, info.head_dim, float(attn.scale)
    x = cap["x"][i].astype(np.float64)
    xp = x[:, PREFIX:]
    mu = xp.mean((0, 1))
    pos = xp.mean(0) - mu
    got = check(cap, i, true_maps(model, layer))
    for h in range(H):
        Wq, Wk = W[h * dh:(h + 1) * dh], W[H * dh + h * dh:H * dh + (h + 1) * dh]
        bq, bk = b[h * dh:(h + 1) * dh], b[H * dh + h * dh:H * dh + (h + 1) * dh]
        total = key = key_pos = key_con = 0.0
        for n in range(len(x)):
            q = xp[n] @ Wq.T + bq
            k = xp[n] @ Wk.T + bk
            L = s * q @ k.T
            total += ((L - L.mean(1, keepdims=True)) ** 2).sum()
            kappa = np.array([s * bq @ (Wk @ xj) for xj in xp[n]])
            kp = np.array([s * bq @ (Wk @ p) for p in pos])
            kc = np.array([s * bq @ (Wk @ (xj - mu - p)) for xj, p in zip(xp[n], pos,
                                                                            strict=True)])
            T = len(kappa)
            key += T * ((kappa - kappa.mean()) ** 2).sum()
            key_pos += T * ((kp - kp.mean()) ** 2).sum()
            key_con += T * ((kc - kc.mean()) ** 2).sum()
        np.testing.assert_allclose(got.bias_key_share[h], key / total, rtol=1e-5)
        np.testing.assert_allclose(got.bias_key_pos_share[h], key_pos / total, rtol=1e-5)
        np.testing.assert_allclose(got.bias_key_con_share[h], key_con / total, rtol=1e-5)
    assert (got.bias_key_share > 1e-3).all()


def test_planted_bias_only_head_has_share_one(captured):
    """A head whose query weights are zero has logits s b_q·k_j: softmax sees only the
    key-side bias term, so its share is 1; a head without biases has share 0."""
    model, _, cap = captured
    maps = true_maps(model, LAYERS[0])
    A = maps.A.copy()
    A[0] = 0.0
    bias_q = maps.bias_q.copy()
    bias_q[1] = 0.0
    planted = HeadMaps(A=A, B=maps.B, scale=maps.scale, bias_q=bias_q, bias_k=maps.bias_k)
    q = cap["q"][0].copy()
    q[:, 0] = bias_q[0]  # the model's queries of that head
    q[:, 1] -= maps.bias_q[1]
    cap0 = {**cap, "q": np.stack([q, cap["q"][1], cap["q"][2]])}
    got = check(cap0, 0, planted)
    assert got.residual < 1e-4
    np.testing.assert_allclose(got.bias_key_share, [1.0, 0.0], atol=1e-6)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A run extracted with biased weights (a safetensors file), through the real tasks."""
    tmp = tmp_path_factory.mktemp("check")
    model, _ = models.load_model(TINY, "random", img_size=IMG, seed=0)
    with_random_biases(model, seed=2)
    weights = tmp / "biased.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    cfg = ExtractConfig(model=TINY, weights=str(weights), images="samples", n_images=6,
                        layers=LAYERS, img_size=IMG, dtype="float32", batch_size=3,
                        images_per_chunk=3, device="cpu")
    root = str(tmp / "store")
    plan = prepare_run(root, cfg)
    for shard in plan.shards:
        extract_shard(root, plan.run_id, cfg, shard, plan.layers,
                      list(plan.records[shard.start:shard.stop]))
    return root, plan.run_id


def test_extraction_stores_the_capture_and_biases(extracted):
    root, rid = extracted
    store = Store(root)
    acts = open_activations(store, rid)
    tensors = read_model_tensors(store, rid)
    for layer in LAYERS:
        cap = read_logit_check(store, rid, layer)
        assert list(cap.check_image.values) == [0, 1]
        np.testing.assert_allclose(cap.x.values, acts.attn_in.sel(layer=layer)[:2].values,
                                   atol=1e-5)
        assert float(cap.attn_out_residual) < 1e-6
        assert np.abs(tensors.qkv_bias.sel(layer=layer).values).min() > 0
    assert read_logit_check(store, rid, 1) is None  # not an extracted layer


def test_decomposition_publishes_the_check(extracted, monkeypatch):
    root, rid = extracted
    ds = decompose_site_layer(root, rid, "attn_in", LAYERS[1], DecomposeOptions())
    assert float(ds.model_logit_residual) < 1e-4
    assert float(ds.model_attn_residual) < 1e-6
    assert ds.bias_key_share.dims == ("head",)
    # an energy ratio, not a fraction: the bilinear part may cancel some of the key-side term
    assert (ds.bias_key_share > 0).all() and np.isfinite(ds.bias_key_share).all()
    resid = decompose_site_layer(root, rid, "resid", LAYERS[1], DecomposeOptions())
    assert np.isnan(resid.model_logit_residual) and "bias_key_share" not in resid

    def wrong_scale(W, H, s, b=None):
        return head_maps(W, H, 2 * s, b)

    monkeypatch.setattr(decompose_tasks, "head_maps", wrong_scale)
    bad = decompose_site_layer(root, rid, "attn_in", LAYERS[1], DecomposeOptions())
    assert float(bad.model_logit_residual) > 0.5
    assert float(bad.logit_residual) < 1e-10  # the old identity cannot see it
