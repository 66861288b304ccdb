"""bfd.models: model refusal, token layout, weight sources, weight accessors."""

from __future__ import annotations

import hashlib
import json
import socket

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from bfd import models as M

# timm's own test ViT (width 64, depth 6, 2 heads, patch 16, native 160 px): cheap to build.
TINY = "test_vit"


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, M.ModelInfo]:
    return M.load_model(TINY, "random", img_size=64, seed=1)


def test_qkv_weight_scale_and_preprocessing(tiny) -> None:
    model, info = tiny
    w = M.qkv_weight(model, 4)
    assert w.shape == (3 * info.d_attn, info.width) == (192, 64)
    assert M.attn_scale(model, 4) == pytest.approx(info.head_dim**-0.5)
    assert M.data_config(model)["input_size"] == (3, 64, 64)
    from PIL import Image

    assert M.transform(model)(Image.new("RGB", (90, 70))).shape == (3, 64, 64)
    assert all(not p.requires_grad for p in model.parameters()) and not model.training


@pytest.mark.parametrize(
    ("name", "img_size", "prefix", "types", "grid", "covers"),
    [
        ("vit_small_patch16_224", None, 1, ["cls"], (14, 14), True),
        ("vit_small_patch14_reg4_dinov2", 224, 5, ["cls"] + ["register"] * 4, (16, 16), False),
        ("deit3_small_patch16_224", None, 1, ["cls"], (14, 14), False),
        ("deit_small_distilled_patch16_224", None, 2, ["cls", "dist"], (14, 14), True),
        ("vit_base_patch16_siglip_224", None, 0, [], (14, 14), False),
        ("vit_base_patch16_clip_224", None, 1, ["cls"], (14, 14), True),
    ],
)
def test_token_layout(name, img_size, prefix, types, grid, covers) -> None:
    info = M.describe(name, img_size=img_size)
    assert (info.num_prefix_tokens, info.grid, info.pos_embed_covers_prefix) == (
        prefix, grid, covers)
    assert info.has_pos_embed
    n_patch = grid[0] * grid[1]
    assert info.token_types() == types + ["patch"] * n_patch
    rows, cols = info.token_rows_cols()
    assert rows[:prefix] == cols[:prefix] == [-1] * prefix
    assert rows[prefix + grid[1]] == 1 and cols[prefix + grid[1] + 2] == 2
    assert json.loads(json.dumps(info.to_dict()))["grid"] == list(grid)


def test_registers_have_no_pos_embed_rows() -> None:
    model, info = M.load_model("vit_small_patch14_reg4_dinov2", "random", img_size=224)
    assert (info.num_reg_tokens, info.has_cls, info.grid) == (4, True, (16, 16))
    assert model.pos_embed.shape[1] == 256  # patches only: cls and registers carry none
    rows = M.pos_embed_patch_rows(model)
    assert rows.shape == (256, info.width)
    torch.testing.assert_close(torch.from_numpy(rows), model.pos_embed[0])
    vit, _ = M.load_model(TINY, "random", img_size=32)
    torch.testing.assert_close(torch.from_numpy(M.pos_embed_patch_rows(vit)), vit.pos_embed[0, 1:])
    no_pos = timm.create_model(TINY, pos_embed="none")
    assert M.pos_embed_patch_rows(no_pos) is None
    assert not M._info(no_pos, TINY, "random", "").has_pos_embed


class _SeparateQKV(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: timm.create_model("resnet18"), "class is ResNet, with no attention heads"),
        (lambda: timm.create_model("convnext_atto"), "class is ConvNeXt"),
        (lambda: timm.create_model("vit_relpos_small_patch16_224"), "VisionTransformerRelPos"),
        (lambda: timm.create_model("vit_small_patch16_224", qk_norm=True), "active q_norm"),
        (lambda: timm.create_model("eva02_tiny_patch14_224"), "rotary position embeddings"),
        (lambda: timm.create_model("vit_small_patch16_rope_224"), "rotary position embeddings"),
        (lambda: timm.create_model("vit_small_patch16_dinov3"), "rotary position embeddings"),
        (lambda: timm.create_model("vit_dwee_patch16_reg1_gap_256"), "DiffAttention"),
        (lambda: timm.create_model("vit_small_patch16_18x2_224"), "no single `attn`"),
        # models with attention were refused as having "no attention heads" (trial 21, F1)
        (lambda: timm.create_model("convit_tiny"),
         "class is ConVit, not timm's VisionTransformer: its attention (GPSA: gated positional "
         "self-attention"),
        (lambda: timm.create_model("coat_lite_tiny"),
         "its attention (FactorAttnConvRelPosEnc: factorised attention"),
        (lambda: timm.create_model("efficientvit_b0"),
         "its attention (LiteMLA: ReLU linear attention"),
        (lambda: timm.create_model("shvit_s1"), "class is SHViT, not timm's VisionTransformer: "
         "its attention (SHSA)"),
        # its attention is timm's own (trial 34 F2: it read "(Attention) is not timm's Attention")
        (lambda: timm.create_model("naflexvit_base_patch16_gap"),
         "class is NaFlexVit, not timm's VisionTransformer: its attention is timm's Attention, "
         "but its tokens are not in the token layout (patch_embed"),
    ],
)
def test_unsupported_models_are_refused(build, reason) -> None:
    """Each with its own reason, and every refusal names the family that works, as the README
    says (the rope, q_norm, DiffAttention and parallel-block ones did not: trial 21, F2)."""
    with torch.device("meta"):
        model = build()
    with pytest.raises(M.UnsupportedModelError) as err:
        M.check_supported(model, "the-model")
    said = str(err.value)
    assert said.startswith("model 'the-model' is not supported: ")
    assert reason in said, said
    assert said.endswith("; timm's VisionTransformer with a learned absolute pos_embed works: "
                         "vit_*, deit*, *_dinov2 (with registers too), CLIP/SigLIP towers"), said
    assert said.count("works:") == 1
    if "with no attention heads" in said:
        assert not any(M._is_attention(m) for m in model.modules()), said


def test_separate_qkv_refused_and_load_refuses_before_reading_weights(tmp_path) -> None:
    with torch.device("meta"):
        model = timm.create_model(TINY)
    model.blocks[2].attn = _SeparateQKV(64)
    with pytest.raises(M.UnsupportedModelError, match="block 2 .*no fused `qkv`"):
        M.check_supported(model)
    with pytest.raises(M.UnsupportedModelError, match="resnet18"):
        M.load_model("resnet18", str(tmp_path / "missing.safetensors"))
    with pytest.raises(M.UnsupportedModelError, match="unknown to timm") as err:
        M.describe("no_such_model_xyz")
    assert "did you mean" not in str(err.value)
    # a typo and a mistyped pretrained tag: the close names of timm's own lists
    with pytest.raises(M.UnsupportedModelError, match="did you mean vit_small_patch16_224, "):
        M.describe("vit_smal_patch16_224")
    with pytest.raises(M.UnsupportedModelError,
                       match=r"did you mean vit_small_patch16_224\.augreg_in21k, "):
        M.describe("vit_small_patch16_224.augreg_in21")
    assert "vit_small_patch16_224" in M.supported_model_names("vit_small_patch16_2*")
    assert M.supported_model_names("vit_small_patch16_18x2*") == []


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No cached weights anywhere and the hub offline, whatever this machine holds."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_pretrained_not_cached_fails_fast(empty_caches, monkeypatch) -> None:
    """Offline and not cached: one line at once, without trying the network (no connection
    that could wait on a timeout)."""
    tried = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: tried.append(a))
    with pytest.raises(M.WeightsUnavailableError) as err:
        M.load_model(TINY, "pretrained")
    assert tried == []
    msg = str(err.value)
    assert "\n" not in msg and TINY in msg and str(empty_caches) in msg
    assert "--weights PATH" in msg and "--weights random" in msg


def test_pretrained_online_but_unreachable_fails_fast(empty_caches, monkeypatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise OSError("no route to host")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(M.WeightsUnavailableError, match="unreachable.*--weights PATH"):
        M.load_model(TINY, "pretrained")


def test_pretrained_from_cache_without_network(empty_caches, monkeypatch) -> None:
    src, _ = M.load_model(TINY, "random", seed=5)
    repo = timm.models.get_pretrained_cfg(TINY).hf_hub_id
    snap = empty_caches / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (empty_caches / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (empty_caches / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("abc123")
    save_file(_state_dict(src), snap / "model.safetensors")
    model, info = M.load_model(TINY, "pretrained", img_size=32)
    assert info.weights == "pretrained"
    assert info.weights_sha256 == _sha(snap / "model.safetensors")
    torch.testing.assert_close(model.blocks[5].attn.qkv.weight, src.blocks[5].attn.qkv.weight)
    assert info.grid == (2, 2)


def test_local_safetensors_resamples_pos_embed(tmp_path) -> None:
    src, _ = M.load_model(TINY, "random", seed=2)
    path = tmp_path / "tiny.safetensors"
    save_file(_state_dict(src), path)
    model, info = M.load_model(TINY, str(path), img_size=96)
    assert info.grid == (6, 6) and info.weights == str(path)
    assert info.weights_sha256 == _sha(path)
    expected = resample_abs_pos_embed(src.pos_embed, new_size=(6, 6), old_size=(10, 10),
                                      num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed, expected)
    torch.testing.assert_close(model.blocks[5].attn.qkv.weight, src.blocks[5].attn.qkv.weight)

    pth = tmp_path / "tiny.pth"
    torch.save(_state_dict(src), pth)
    assert M.load_model(TINY, str(pth))[1].weights_sha256 == _sha(pth)
    with pytest.raises(ValueError, match="do not fit 'test_vit3'"):
        M.load_model("test_vit3", str(path))
    with pytest.raises(ValueError, match="does not exist"):
        M.load_model(TINY, str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="is not pretrained, random or a checkpoint file"):
        M.load_model(TINY, "imagenet")


def test_a_checkpoint_that_passes_its_first_bytes_check_but_not_its_load_is_named(tmp_path):
    """What torch.load raises for a damaged file (EOFError, UnicodeDecodeError, ...) and
    torch's list of every key that does not fit are each one ValueError naming the file: an
    EOFError used to escape as itself (a traceback), torch's key list was cut at 300
    characters."""
    from bfd.files import check_checkpoint

    src, _ = M.load_model(TINY, "random", seed=2)
    legacy = tmp_path / "legacy.pt"  # the format before torch 1.6: one pickle, then the data
    torch.save(_state_dict(src), legacy, _use_new_zipfile_serialization=False)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(legacy.read_bytes()[:3000])  # inside the state_dict's pickle
    check_checkpoint(cut)  # its first bytes are a pickle's
    with pytest.raises(ValueError, match=r"^weights file '.*cut\.pt' is not a readable "
                       r"checkpoint \(damaged, truncated or not a torch file\): "):
        M.load_model(TINY, str(cut))
    other = tmp_path / "other.pth"
    torch.save({**_state_dict(src), "extra.weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match=r"^weights '.*other\.pth' do not fit 'test_vit': "
                       r"1 tensor\(s\) not in the model \(extra\.weight\)$"):
        M.load_model(TINY, str(other))
    wide = timm.create_model("test_vit3", pretrained=False).state_dict()
    with pytest.raises(ValueError) as refused:
        M.load_model(TINY, str(_saved(wide, tmp_path / "wide.pth")))
    assert "do not fit 'test_vit': " in str(refused.value) and len(str(refused.value)) < 500
    # registers and a class token would not make it fit: the hint is another architecture
    assert str(refused.value).endswith(
        "the file holds a ViT of width 96 and depth 9, the model's are 64 and 6: give the timm "
        "name of its architecture as --model"), str(refused.value)


def _saved(state: dict, path):
    torch.save(state, path)
    return path


def test_random_weights_are_seeded_and_leave_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a, info = M.load_model(TINY, "random", img_size=32, seed=7)
    b, _ = M.load_model(TINY, "random", img_size=32, seed=7)
    c, _ = M.load_model(TINY, "random", img_size=32, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert info.weights_sha256 == "random-seed-7"
    assert torch.equal(a.blocks[0].attn.qkv.weight, b.blocks[0].attn.qkv.weight)
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match="multiple of the patch size 16.*got 40"):
        M.load_model(TINY, "random", img_size=40)


def test_random_weights_are_one_network_per_size_and_model_args():
    """What the README says of --weights random: the same seed gives the same network at one
    size, and another network (not the same weights resampled) at another --img-size or with
    another --model-arg, all under the same weights_sha256."""
    def qkv(**kw):
        model, info = M.load_model(TINY, "random", seed=0, **kw)
        return M.qkv_weight(model, 0).numpy(), info.weights_sha256

    (a, sha), (again, _), (smaller, sha_small), (no_bias, _) = (
        qkv(img_size=64), qkv(img_size=64), qkv(img_size=32),
        qkv(img_size=64, model_args={"class_token": False, "global_pool": "avg"}))
    assert sha == sha_small == "random-seed-0"
    np.testing.assert_array_equal(a, again)
    assert a.shape == smaller.shape == no_bias.shape
    assert np.abs(a - smaller).max() > 1e-3 and np.abs(a - no_bias).max() > 1e-3
