"""The CUDA paths, asserted: skipped without a GPU, run on the device by ``bench/gpu.sh``.

Imports no Prefect, so it runs where only torch, timm, zarr, dask and xarray are installed.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from storebuilder import build_run, random_run_arrays

import bfd
from bfd.storage import Store, open_activations
from bfd.tasks.decompose import DecomposeOptions, decompose_site_layer
from bfd.tasks.extract import ExtractConfig, extract_shard, prepare_run, shard_slots

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

NUMERIC = ("energy", "frac", "sigma", "alpha", "beta", "mode_energy", "frac_pos", "frac_img",
           "frac_int", "frac_content", "pos", "mu", "eff_rank", "eff_rank_sigma", "k90",
           "mode_coupling", "ss_total", "pos_split_half_r", "shuffle_frac_pos")


@contextlib.contextmanager
def no_tf32():
    """Plain float32 on the GPU, so that it agrees with the CPU to float32 rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_decompose_on_cuda_equals_cpu_analyze(tmp_path):
    store = Store(tmp_path)
    acts, qkv, H = random_run_arrays(0)
    rid = build_run(store, acts, qkv, H)
    for layer in range(qkv.shape[0]):
        ds = decompose_site_layer(str(store.root), rid, "attn_in", layer,
                                  DecomposeOptions(device="cuda"))
        ref = bfd.analyze(acts["attn_in"][layer], qkv[layer], H, prefix_tokens=1)
        for name in NUMERIC:
            np.testing.assert_allclose(ds[name], ref[name], rtol=1e-5, atol=1e-9, err_msg=name)
        np.testing.assert_array_equal(ds.head_type, ref.head_type)
        np.testing.assert_array_equal(ds.mode_type, ref.mode_type)


def _extract(root, images, device):
    cfg = ExtractConfig(model="vit_tiny_patch16_224", weights="random", images=str(images),
                        layers="0,2", img_size=64, dtype="float32", batch_size=3,
                        images_per_chunk=4, device=device)
    plan = prepare_run(str(root), cfg)
    # as the flow's one worker runs them: two shards side by side on the GPU (shard_slots)
    with ThreadPoolExecutor(shard_slots(device)) as pool:
        for done in [pool.submit(extract_shard, str(root), plan.run_id, cfg, shard, plan.layers,
                                 list(plan.records[shard.start:shard.stop]))
                     for shard in plan.shards]:
            done.result()
    return open_activations(Store(root), plan.run_id).load()


def test_cuda_extraction_stores_the_cpu_forward(tmp_path):
    """The pinned-buffer copies of CUDA shards run two at a time, with an undecodable image in
    a batch (the non-contiguous path), store what a CPU forward stores."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(9):
        Image.fromarray(rng.integers(0, 255, (80, 72, 3), dtype=np.uint8)).save(
            folder / f"img{i}.png")
    (folder / "img4b.png").write_bytes(b"not an image")
    with no_tf32():
        gpu = _extract(tmp_path / "gpu", folder, "cuda")
    cpu = _extract(tmp_path / "cpu", folder, "cpu")
    for site in ("attn_in", "resid"):
        got, want = gpu[site].values, cpu[site].values
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.isnan(want).all(axis=(0, 2, 3)).sum() == 1  # the bad image's rows
        scale = np.nanmax(np.abs(want))
        assert np.nanmax(np.abs(got - want)) <= 1e-4 * scale, site


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_activations_that_overflow_float16_are_refused_on_either_device(tmp_path, device):
    """The finiteness test of what is stored runs on the GPU's float16 activations there and
    on the shard buffer's bits on the CPU: both refuse a layer that overflows float16 (the
    CPU's twin, in tests/test_degenerate.py, runs through the CLI)."""
    import safetensors.torch
    import timm

    state = timm.create_model("test_vit", pretrained=False, img_size=32).state_dict()
    state["blocks.1.norm1.weight"] = state["blocks.1.norm1.weight"] * 0 + 1e6
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    cfg = ExtractConfig(model="test_vit", weights=str(path), images="samples", n_images=4,
                        layers="0,1", img_size=32, dtype="float16", batch_size=3,
                        images_per_chunk=4, device=device)
    plan = prepare_run(str(tmp_path), cfg)
    (shard,) = plan.shards
    with pytest.raises(ValueError, match="non-finite activations .* at site attn_in of layer 1"):
        extract_shard(str(tmp_path), plan.run_id, cfg, shard, plan.layers,
                      list(plan.records[shard.start:shard.stop]))
    assert not list(Store(tmp_path).shards_dir(plan.run_id).glob("*.json"))
