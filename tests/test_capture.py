"""bfd.capture: activations read by hooks against a hand-run forward, early stop, hook
cleanup, concurrent captures on one model and refused requests."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from bfd import capture as C
from bfd import models as M

# timm's own test ViT (width 64, depth 6, 2 heads, patch 16, native 160 px): cheap to build.
TINY = "test_vit"


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, M.ModelInfo]:
    return M.load_model(TINY, "random", img_size=64, seed=1)


def _hand_resid(model: nn.Module, images: torch.Tensor, layer: int) -> torch.Tensor:
    """The input of blocks[layer], by running timm's own stages one by one."""
    with torch.no_grad():
        x = model.patch_embed(images)
        x = model._pos_embed(x)
        x = model.patch_drop(x)
        x = model.norm_pre(x)
        for block in model.blocks[:layer]:
            x = block(x)
    return x


@pytest.mark.parametrize(
    ("name", "img_size"),
    [(TINY, 64), ("test_vit2", 48), ("vit_small_patch14_reg4_dinov2", 56),
     ("deit3_small_patch16_224", 48)],
)
def test_capture_equals_hand_forward(name: str, img_size: int) -> None:
    model, info = M.load_model(name, "random", img_size=img_size, seed=0)
    images = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    layers = [0, 2, info.depth - 1]
    out = C.forward_capture(model, images, layers, ["attn_in", "resid"])
    for site in ("attn_in", "resid"):
        assert out[site].shape == (3, 2, info.num_tokens, info.width)
        assert out[site].dtype == torch.float32
    for i, l in enumerate(layers):
        resid = _hand_resid(model, images, l)
        with torch.no_grad():
            attn_in = model.blocks[l].norm1(resid)
        torch.testing.assert_close(out["resid"][i], resid, rtol=0, atol=1e-6)
        torch.testing.assert_close(out["attn_in"][i], attn_in, rtol=0, atol=1e-6)


def test_capture_order_stop_early_and_hook_cleanup(tiny) -> None:
    model, info = tiny
    images = torch.randn(1, 3, 64, 64)
    head_calls = []
    handle = model.head.register_forward_hook(lambda *a: head_calls.append(1))
    try:
        out = C.forward_capture(model, images, [3, 1], ["resid"])
    finally:
        handle.remove()
    assert list(out) == ["resid"] and out["resid"].shape == (2, 1, info.num_tokens, info.width)
    torch.testing.assert_close(out["resid"][0], _hand_resid(model, images, 3), rtol=0, atol=1e-6)
    assert head_calls == []  # the forward stopped after block 3's input

    def boom(*_: object) -> None:
        raise RuntimeError("boom")

    handle = model.blocks[1].register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            C.forward_capture(model, images, [0, 2], ["attn_in", "resid"])
        assert len(model.blocks[1]._forward_pre_hooks) == 1  # only the test's own hook
    finally:
        handle.remove()
    assert not model.blocks[0]._forward_pre_hooks
    assert not model.blocks[2]._forward_pre_hooks
    assert not model.blocks[2].attn.qkv._forward_pre_hooks


def test_capture_each_equals_hand_forward_and_the_stacked_capture(tiny) -> None:
    """One tensor per (site, layer), cast as its hook fires: the hand-run forward's values,
    and in float16 the bits of the stacked capture cast afterwards."""
    model, info = tiny
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    layers, sites = [3, 1], ["attn_in", "resid"]
    head_calls = []
    handle = model.head.register_forward_hook(lambda *a: head_calls.append(1))
    try:
        got = C.forward_capture_each(model, images, layers, sites)
    finally:
        handle.remove()
    assert head_calls == []
    assert set(got) == {(s, l) for s in sites for l in layers}
    for l in layers:
        resid = _hand_resid(model, images, l)
        with torch.no_grad():
            attn_in = model.blocks[l].norm1(resid)
        assert got["resid", l].shape == (3, info.num_tokens, info.width)
        torch.testing.assert_close(got["resid", l], resid, rtol=0, atol=1e-6)
        torch.testing.assert_close(got["attn_in", l], attn_in, rtol=0, atol=1e-6)
    half = C.forward_capture_each(model, images, layers, sites, dtype=torch.float16)
    stacked = C.forward_capture(model, images, layers, sites, dtype=torch.float16)
    for (site, l), a in half.items():
        assert a.dtype == torch.float16
        assert torch.equal(a, stacked[site][layers.index(l)]), (site, l)
    with pytest.raises(ValueError, match="distinct"):
        C.forward_capture_each(model, images, [1, 1], ["resid"])


def test_concurrent_captures_on_one_model_do_not_mix(tiny) -> None:
    """Shard tasks in threads of one worker share its cached model (a Dask worker with
    several threads): each capture must see only its own forward's activations."""
    model, _ = tiny
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(2, 3, 64, 64, generator=gen) for _ in range(8)]
    layers, sites = [0, 2, 4], ["attn_in", "resid"]
    expected = [C.forward_capture(model, b, layers, sites) for b in batches]
    start = threading.Barrier(len(batches))

    def capture(k: int) -> dict[str, torch.Tensor]:
        start.wait()
        return C.forward_capture(model, batches[k], layers, sites)

    for _ in range(3):
        with ThreadPoolExecutor(len(batches)) as pool:
            got = list(pool.map(capture, range(len(batches))))
        for g, e in zip(got, expected, strict=True):
            for site in sites:
                assert torch.equal(g[site], e[site]), site


def test_capture_rejects_bad_arguments(tiny) -> None:
    model, _ = tiny
    images = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"sites must be .*'attn_in'.*got \['mlp'\]"):
        C.forward_capture(model, images, [0], ["mlp"])
    with pytest.raises(ValueError, match=r"layer must be in \[0, 6\).*got 6"):
        C.forward_capture(model, images, [6], ["resid"])
    with pytest.raises(ValueError, match="distinct"):
        C.forward_capture(model, images, [1, 1], ["resid"])
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 64, 64\); got \(1, 3, 32, 32\)"):
        C.forward_capture(model, torch.randn(1, 3, 32, 32), [0], ["resid"])
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            C.forward_capture(model, images, [0], ["resid"])
    finally:
        model.eval()
