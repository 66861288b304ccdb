"""The extract flow on a real Prefect server: stored activations are the model's, bit for bit,
for any worker count or shard size; resume, kill -9, bad images and refused models."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import env_kept
from PIL import Image

from bfd import capture, models
from bfd.cli import main
from bfd.flows.extract import extract
from bfd.flows.runners import task_runner
from bfd.images import list_images, load_image
from bfd.storage import (
    Store,
    open_activations,
    read_image_manifest,
    read_model_tensors,
    read_request,
)
from bfd.tasks import extract as extract_tasks
from bfd.tasks.extract import ExtractConfig, prepare_run

# timm's own test ViT (width 64, depth 6, 2 heads, patch 16): at 32 px, 1 cls + 2x2 patches.
TINY = "test_vit"
SITES = ("attn_in", "resid")
REPO = Path(__file__).resolve().parents[1]


def config(**kw) -> dict:
    base = {
        "model": TINY, "weights": "random", "images": "samples", "n_images": 12,
        "layers": (0, 2, 5), "sites": SITES, "img_size": 32, "dtype": "float32",
        "batch_size": 3, "images_per_chunk": 4, "device": "cpu",
    }
    return {**base, **kw}


def run_flow(root: Path, workers: int = 1, **kw) -> str:
    return extract.with_options(task_runner=task_runner(workers))(config(**kw),
                                                                  str(root))["run_id"]


def arrays(store: Store, rid: str) -> dict[str, np.ndarray]:
    ds = open_activations(store, rid)
    return {site: ds[site].values for site in ds.data_vars}


def markers(store: Store, rid: str) -> dict[str, tuple[str, int]]:
    """Shard marker -> (completed_at, mtime_ns): both change whenever a shard is redone."""
    return {p.name: (json.loads(p.read_text())["completed_at"], p.stat().st_mtime_ns)
            for p in sorted(store.shards_dir(rid).glob("*.json"))}



def direct_forward(cfg: dict) -> dict[str, torch.Tensor]:
    """timm forward with hooks, batched as the flow batches: per chunk, batch_size at a time
    (CPU float32 results may depend on the batch, so the same batches make them comparable)."""
    model, _ = models.load_model(cfg["model"], "random", seed=0, img_size=cfg["img_size"])
    tf = models.transform(model)
    recs = list_images(cfg["images"], cfg["n_images"])
    ipc, bs = cfg["images_per_chunk"], cfg["batch_size"]
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in cfg["sites"]}
    for lo in range(0, len(recs), ipc):
        chunk = recs[lo:lo + ipc]
        for b in range(0, len(chunk), bs):
            x = torch.stack([tf(load_image(r)) for r in chunk[b:b + bs]])
            for site, a in capture.forward_capture(model, x, cfg["layers"], cfg["sites"]).items():
                parts[site].append(a)
    return {site: torch.cat(p, dim=1) for site, p in parts.items()}


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


BAD = {  # file name -> the reason the manifest must give
    "img02_truncated.jpg": "truncated",
    "img05_text.png": "not a recognised image format",
    "img11_empty.jpg": "empty file",
}


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """16 images: 13 decodable PNG/JPEG of various sizes and modes, and the 3 broken of BAD,
    spread over different chunks."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for k in range(16):
        h, w = 24 + 5 * k, 60 - 2 * k
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        name = f"img{k:02d}.{'png' if k % 2 else 'jpg'}"
        data = _png(arr[..., 0] if k == 7 else arr) if k % 2 else _jpeg(arr)
        bad = [b for b in BAD if b.startswith(f"img{k:02d}_")]
        if bad:
            name = bad[0]
            data = {"truncated": _jpeg(arr)[:300], "text": b"not an image, just text\n",
                    "empty": b""}[name.split("_")[1].split(".")[0]]
        (root / name).write_bytes(data)
    return root


def bad_indices(folder: Path) -> list[int]:
    return [r.index for r in list_images(str(folder)) if Path(r.path).name in BAD]


def test_stored_activations_equal_a_direct_forward(prefect_harness, tmp_path):
    cfg = config()
    store = Store(tmp_path / "store")
    rid = run_flow(store.root)
    ds = open_activations(store, rid)
    ref = direct_forward(cfg)
    for site in SITES:
        assert ds[site].dtype == np.float32
        assert torch.equal(torch.from_numpy(ds[site].values), ref[site]), site
    assert list(ds.layer.values) == [0, 2, 5]
    assert list(ds.image.values) == [r.id for r in list_images("samples", 12)]
    assert ds.attrs["dtype"] == "float32" and ds.attrs["run_id"] == rid
    assert ds.attrs["weights_sha256"] == "random-seed-0"
    assert read_request(store, rid).layers == (0, 2, 5)
    assert [r.status for r in read_image_manifest(store, rid)] == ["ok"] * 12
    assert sorted(markers(store, rid)) == ["0.json", "1.json", "2.json"]


@pytest.mark.parametrize(
    ("name", "img_size", "prefix", "covers"),
    [
        ("vit_small_patch16_224", 32, ["cls"], True),
        ("vit_small_patch14_reg4_dinov2", 28, ["cls"] + ["register"] * 4, False),
        ("deit3_small_patch16_224", 32, ["cls"], False),
    ],
)
def test_prefix_grid_coords_and_model_tensors(prefect_harness, tmp_path, name, img_size,
                                              prefix, covers):
    store = Store(tmp_path / "store")
    rid = run_flow(store.root, model=name, img_size=img_size, n_images=3, layers=(1,),
                   images_per_chunk=2)
    ds = open_activations(store, rid)
    model, info = models.load_model(name, "random", seed=0, img_size=img_size)
    gh, gw = info.grid
    P = len(prefix)
    assert (gh, gw) == (2, 2) and info.num_prefix_tokens == P
    assert list(ds.token_type.values) == prefix + ["patch"] * (gh * gw)
    assert list(ds.row.values) == [-1] * P + [t // gw for t in range(gh * gw)]
    assert list(ds.col.values) == [-1] * P + [t % gw for t in range(gh * gw)]
    assert dict(ds.sizes) == {"layer": 1, "image": 3, "token": P + gh * gw, "dim": info.width}
    assert all(np.isfinite(ds[s].values).all() for s in SITES)

    tensors = read_model_tensors(store, rid)
    assert torch.equal(torch.from_numpy(tensors.qkv_weight.values[0]),
                       model.blocks[1].attn.qkv.weight)
    assert float(tensors.attn_scale[0]) == float(model.blocks[1].attn.scale)
    assert tensors.attrs["num_heads"] == info.num_heads
    # pos_embed has a row for the cls token only where it covers the prefix (vit_small);
    # registers never get one; the store keeps the patch rows either way
    assert model.pos_embed.shape[1] == gh * gw + (1 if covers else 0)
    assert tensors.pos_embed.shape == (gh * gw, info.width)
    assert torch.equal(torch.from_numpy(tensors.pos_embed.values),
                       model.pos_embed[0, 1 if covers else 0:])


@pytest.mark.slow
def test_one_two_or_four_workers_and_any_shard_size_give_the_same_bits(prefect_harness,
                                                                        tmp_path, mixed_folder):
    kw = {"images": str(mixed_folder), "n_images": None, "layers": (0, 5), "batch_size": 32,
          "images_per_chunk": 4}
    runs = {
        "1 worker, shards of 4": (1, 4),
        "2 workers, shards of 8": (2, 8),
        "4 workers, shards of 4": (4, 4),
        "1 worker, one shard of 16": (1, 16),
    }
    got, rids = {}, set()
    for label, (workers, per_shard) in runs.items():
        store = Store(tmp_path / label.replace(" ", "_").replace(",", ""))
        rid = run_flow(store.root, workers, images_per_shard=per_shard, **kw)
        got[label] = arrays(store, rid)
        rids.add(rid)
        assert len(markers(store, rid)) == 16 // per_shard
    assert len(rids) == 1  # the shard size is not part of the run's identity
    bad = bad_indices(mixed_folder)
    first = got["1 worker, shards of 4"]
    assert all(np.isnan(first[s][:, bad]).all() for s in SITES)
    assert all(np.isfinite(np.delete(first[s], bad, axis=1)).all() for s in SITES)
    for label, a in got.items():
        for site in SITES:
            assert np.array_equal(a[site], first[site], equal_nan=True), (label, site)


@pytest.mark.slow
def test_kill_9_then_resume_computes_only_the_missing_shards(prefect_harness, tmp_path):
    n_shards = 12
    argv = ["extract", "--model", TINY, "--weights", "random", "--n-images", str(8 * n_shards),
            "--img-size", "32", "--layers", "0,3,5", "--dtype", "float32",
            "--images-per-chunk", "8", "--images-per-shard", "8"]
    killed = Store(tmp_path / "killed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bfd.cli", *argv, "--store",
                                 str(killed.root)], cwd=REPO, env=env, stdout=out, stderr=err,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            done = list(killed.runs_dir.glob("*/shards/*.json"))
            if done:
                os.killpg(proc.pid, signal.SIGKILL)  # the CLI and anything it started
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "err.txt").read_text()[-2000:]
    (rid,) = [p.name for p in killed.runs_dir.iterdir()]
    before = markers(killed, rid)
    assert 1 <= len(before) < n_shards, f"{len(before)} shards were done at the kill"

    with env_kept():
        assert main([*argv, "--store", str(killed.root)]) == 0
    after = markers(killed, rid)
    assert len(after) == n_shards
    assert {k: after[k] for k in before} == before  # shards done before the kill were kept

    whole = Store(tmp_path / "whole")
    with env_kept():
        assert main([*argv, "--store", str(whole.root)]) == 0
    assert [p.name for p in whole.runs_dir.iterdir()] == [rid]
    resumed, reference = arrays(killed, rid), arrays(whole, rid)
    for site in SITES:
        assert np.isfinite(reference[site]).all()
        assert np.array_equal(resumed[site], reference[site]), site


def test_bad_images_keep_nan_slots_and_are_reported(prefect_harness, tmp_path, mixed_folder):
    store = Store(tmp_path / "store")
    rid = run_flow(store.root, images=str(mixed_folder), n_images=None, layers=(0, 5))
    acts = arrays(store, rid)
    manifest = read_image_manifest(store, rid)
    records = list_images(str(mixed_folder))
    assert [m.id for m in manifest] == [r.id for r in records]
    bad = bad_indices(mixed_folder)
    assert len(bad) == len(BAD) and len(manifest) == 16
    for m in manifest:
        if m.index in bad:
            assert m.status == "skipped", m
            assert BAD[m.id] in m.error.lower(), m
            assert all(np.isnan(acts[s][:, m.index]).all() for s in SITES)
        else:
            assert (m.status, m.error) == ("ok", None), m
            assert all(np.isfinite(acts[s][:, m.index]).all() for s in SITES)


@pytest.mark.parametrize(("device", "name", "gpus", "expected"), [
    ("cuda", 0, 4, "cuda:0"), ("cuda", 3, 4, "cuda:3"), ("cuda", 5, 4, "cuda:1"),
    ("cuda", "2", 4, "cuda:2"),          # names as strings, e.g. from a config
    ("cuda", "tcp://10.0.0.1:4242", 4, "cuda"),  # not a local worker number: as given
    ("cuda", 3, 1, "cuda"),              # one GPU seen (CUDA_VISIBLE_DEVICES per worker)
    ("cuda:2", 0, 4, "cuda:2"), ("cpu", 1, 4, "cpu"),  # an explicit choice is kept
])
def test_local_workers_take_one_gpu_each(device, name, gpus, expected):
    assert extract_tasks.worker_device(device, name, gpus) == expected


@pytest.mark.parametrize(("device", "threads"), [("cpu", 1), ("cuda", 2), ("cuda:1", 2)])
def test_one_local_worker_runs_two_shards_at_once_on_a_gpu(device, threads):
    """``bfd extract``/``audit`` with one worker: the flow's thread pool runs
    ``shard_slots`` shard tasks side by side, two on a GPU, one on the CPU."""
    assert task_runner(1, None, device)._max_workers == threads
    assert task_runner(1)._max_workers == 1


def test_weights_file_changed_in_place_makes_a_new_run(tmp_path):
    """The planner and the shard tasks share one loaded model per process; a weights file
    rewritten in place must be loaded and hashed again, never served from that cache."""
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    store = Store(tmp_path / "store")
    cfg = ExtractConfig(**config(weights=str(path), n_images=4, layers=(0,)))
    plans, qkv = [], []
    for seed in (1, 2):
        src, _ = models.load_model(TINY, "random", img_size=32, seed=seed)
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, path)
        plans.append(prepare_run(str(store.root), cfg))
        qkv.append(src.blocks[0].attn.qkv.weight.detach().numpy())
        stored = read_model_tensors(store, plans[-1].run_id).qkv_weight.values[0]
        assert np.array_equal(stored, qkv[-1])
    assert plans[0].run_id != plans[1].run_id
    assert not np.array_equal(qkv[0], qkv[1])


def test_overlapped_stages_store_the_same_bits(tmp_path, mixed_folder, monkeypatch):
    """The GPU path (decoding ahead, chunks written by a writer thread during the next
    forward, two shards side by side in one process as the flow's worker runs them there:
    ``shard_slots``), run on the CPU, stores what the CPU's stage-by-stage path stores."""
    cfg = ExtractConfig(**config(images=str(mixed_folder), n_images=None, layers=(0, 5),
                                 images_per_shard=8))
    got = {}
    for overlap in (False, True):
        monkeypatch.setattr(extract_tasks, "_overlaps", lambda device, o=overlap: o)
        slots = extract_tasks.shard_slots("cpu")
        assert slots == (extract_tasks.GPU_SHARD_SLOTS if overlap else 1) == 1 + overlap
        store = Store(tmp_path / f"overlap-{overlap}")
        plan = prepare_run(str(store.root), cfg)
        extract_tasks._cached_model.cache_clear()  # the shards' first load, side by side
        with ThreadPoolExecutor(slots) as pool:  # 2 shards of 2 chunks, bad images in both
            for done in [pool.submit(extract_tasks.extract_shard, str(store.root), plan.run_id,
                                     cfg, shard, plan.layers,
                                     list(plan.records[shard.start:shard.stop]))
                         for shard in plan.shards]:
                done.result()
        assert extract_tasks._cached_model.cache_info().misses == 1  # one load, shared
        got[overlap] = (arrays(store, plan.run_id), read_image_manifest(store, plan.run_id))
    (plain, plain_manifest), (overlapped, overlapped_manifest) = got[False], got[True]
    assert overlapped_manifest == plain_manifest
    assert {m.status for m in plain_manifest} == {"ok", "skipped"}
    for site in SITES:
        assert np.array_equal(overlapped[site], plain[site], equal_nan=True), site


@pytest.mark.parametrize(
    ("name", "reason"),
    [("resnet18", "with no attention heads to decompose"),
     ("eva02_tiny_patch14_224", "rotary position embeddings"),
     ("vit_relpos_small_patch16_224", "adds a relative position bias to the logits")],
)
def test_unsupported_models_are_refused_before_any_work(prefect_harness, tmp_path, name,
                                                        reason):
    root = tmp_path / "store"
    with pytest.raises(models.UnsupportedModelError, match=reason) as err:
        run_flow(root, model=name, img_size=None)
    assert f"model {name!r} is not supported" in str(err.value)
    assert not root.exists()  # no run group, request, manifest or model tensors


def test_unsupported_model_with_img_size_is_refused(tmp_path):
    with pytest.raises(models.UnsupportedModelError):
        prepare_run(str(tmp_path / "store"),
                    ExtractConfig(**config(model="resnet18", img_size=32)))
    assert not (tmp_path / "store").exists()


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file()}


def test_resume_reuses_completed_shards_and_any_change_makes_a_new_run(prefect_harness,
                                                                       tmp_path):
    store = Store(tmp_path / "store")
    rid = run_flow(store.root)
    first = markers(store, rid)
    plain = _files(store.run_dir(rid))
    chunks = _files(Path(store.zarr_path) / rid / "attn_in")
    assert len(first) == 3 and len(chunks) > 3

    assert run_flow(store.root) == rid
    assert markers(store, rid) == first
    assert _files(store.run_dir(rid)) == plain  # request, manifest and markers untouched
    assert _files(Path(store.zarr_path) / rid / "attn_in") == chunks

    # same request, other layer order and shard size: same run (shard size in a fresh store,
    # where no marker of another plan exists)
    other = str(tmp_path / "other")
    same = [config(layers=(5, 0, 2)), config(images_per_shard=8), config(batch_size=4)]
    for cfg in same:
        assert prepare_run(other, ExtractConfig(**cfg)).run_id == rid
    changed = {
        "layers": config(layers=(0, 2)), "dtype": config(dtype="float16"),
        "n_images": config(n_images=11), "sites": config(sites=("attn_in",)),
        "img_size": config(img_size=48), "seed": config(seed=1),
        "images": config(images=str(tmp_path / "pics"), n_images=None),
    }
    (tmp_path / "pics").mkdir()
    for k in range(3):
        (tmp_path / "pics" / f"{k}.png").write_bytes(_png(np.full((8, 8, 3), k, np.uint8)))
    ids = {what: prepare_run(str(tmp_path / what), ExtractConfig(**cfg)).run_id
           for what, cfg in changed.items()}
    assert len(set(ids.values()) | {rid}) == len(changed) + 1, ids


def test_resume_with_another_shard_plan_is_refused(prefect_harness, tmp_path):
    store = Store(tmp_path / "store")
    rid = run_flow(store.root)
    first, acts = markers(store, rid), arrays(store, rid)
    with pytest.raises(ValueError, match=r"marker of shard \d covers images \d+:\d+, the plan has"):
        prepare_run(str(store.root), ExtractConfig(**config(images_per_shard=8)))
    assert markers(store, rid) == first
    assert all(np.array_equal(arrays(store, rid)[s], acts[s]) for s in SITES)


def test_the_plan_line_says_one_shard_and_sizes_in_a_unit_that_reads():
    """"1 shard" (not "1 shards"), "1 image", and a size in the unit that reads best: a small
    run's 96 KiB is not "0.00 GiB" to write."""
    from bfd.storage import Shard
    from bfd.tasks.extract import RunPlan

    def plan(sizes: list[int], pending: tuple[int, ...], nbytes: int) -> str:
        starts = np.cumsum([0, *sizes])
        shards = tuple(Shard(k, int(a), int(b)) for k, (a, b) in
                       enumerate(zip(starts[:-1], starts[1:], strict=True)))
        return RunPlan(run_id="r", layers=(0,), shards=shards, pending=pending, records=(),
                       n_images=int(starts[-1]), bytes_to_write=nbytes).summary()

    assert plan([4, 1], (1,), 96 * 1024) == (
        "run r: 5 images in 2 shards; 1 shard (1 image) to extract, 96.0 KiB to write")
    assert plan([4], (0,), 3 * 2**20 // 2) == (
        "run r: 4 images in 1 shard; 1 shard (4 images) to extract, 1.50 MiB to write")
    assert plan([4, 4, 4], (0, 2), 37 * 2**30 + 2**29) == (
        "run r: 12 images in 3 shards; 2 shards (8 images) to extract, 37.5 GiB to write")
    assert plan([4], (), 0).endswith("0 shards (0 images) to extract, 0 B to write")
    assert plan([4], (0,), 1023 * 2**20 + 2**20 - 1).endswith("1.00 GiB to write")


def test_bytes_to_write_count_the_last_chunk_whole_and_what_a_run_writes_besides(
        prefect_harness, tmp_path):
    """The planner's bytes to write (its line, and the free-space refusal's figure) are the
    data a run puts on disk: 6 images in chunks of 4 write two whole chunks (8 images'
    bytes), and the run writes its model tensors, logit check and results besides. It counted
    6 images' activations alone: a trial's disk filled mid-run at 2.9x the figure."""
    from bfd.flows.decompose import decompose
    from bfd.tasks.extract import RUN_FILES_OVERHEAD, RUN_FILES_PER_LAYER, bytes_to_write

    cfg = config(n_images=6, layers=(0, 2))
    plan = prepare_run(str(tmp_path / "planned"), ExtractConfig(**cfg))
    rid = run_flow(tmp_path / "s", n_images=6, layers=(0, 2))
    decompose(rid, str(tmp_path / "s"))
    run = tmp_path / "s" / "bfd.zarr" / rid

    def data_bytes(folder: Path) -> int:  # chunk files, not the metadata (zarr.json)
        return sum(p.stat().st_size for p in folder.rglob("*")
                   if p.is_file() and p.name != "zarr.json")

    def disk_bytes(folder: Path) -> int:  # what du counts of the chunks' c/ folder
        c = folder / "c"
        return sum(p.stat().st_blocks * 512 for p in (c, *c.rglob("*")))

    chunks = sum(data_bytes(run / site) for site in SITES)
    info = models.describe(TINY, 32)
    assert chunks == 2 * 2 * 8 * info.num_tokens * info.width * 4  # 2 sites x 2 layers x 8
    # images, float32; on the disk, with the chunks' folders and whole blocks (trial 30: the
    # data bytes alone were 1.8 % below du)
    on_disk = sum(disk_bytes(run / site) for site in SITES)
    estimate = bytes_to_write(ExtractConfig(**cfg), info, 2, 6)
    assert estimate >= on_disk > 0.9 * estimate, (estimate, on_disk)
    besides = data_bytes(run) - chunks  # model tensors, logit check, results
    overhead = plan.bytes_to_write - estimate - RUN_FILES_OVERHEAD - 2 * RUN_FILES_PER_LAYER
    assert overhead >= besides > 0.75 * overhead, (besides, overhead)
    # on the disk, the whole run in whole blocks with its folders: at most what was said
    # (trial 33: a small run took 2.6 times it, its results' ~180 arrays' files and folders)
    used = sum(p.stat().st_blocks * 512 for p in (run, *run.rglob("*")))
    assert plan.bytes_to_write >= used, (plan.bytes_to_write, used)


def test_weights_overwritten_during_extraction_stop_it_before_a_second_model(tmp_path):
    """A weights file saved again while its run is extracted (a training job's last.pth):
    the shards after it would be another model's, published as one run with the first
    file's hash (trial 26). Its next shard refuses, naming both hashes; the shards done stay,
    and the file restored, the run finishes as one model's."""
    import shutil

    import timm
    from safetensors.torch import save_file

    weights = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        state = timm.create_model(TINY, pretrained=False, img_size=32).state_dict()
        weights.append(tmp_path / f"seed{seed}.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights[-1]))
    live = tmp_path / "last.safetensors"
    shutil.copyfile(weights[0], live)
    cfg = ExtractConfig(**config(weights=str(live), images_per_shard=4))
    plan = prepare_run(str(tmp_path / "store"), cfg)
    first, second, *_ = plan.shards

    def run(shard):
        return extract_tasks.extract_shard(str(tmp_path / "store"), plan.run_id, cfg, shard,
                                           plan.layers, list(plan.records[shard.start:shard.stop]))

    run(first)
    shutil.copyfile(weights[1], live)  # saved again by the training job
    os.utime(live, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(ValueError, match=rf"weights file '{live}' changed while run "
                                         rf"{plan.run_id} was extracted \(sha256 "):
        run(second)
    store = Store(tmp_path / "store")
    assert [p.name for p in store.shards_dir(plan.run_id).glob("*.json")] == ["0.json"]
    shutil.copyfile(weights[0], live)
    os.utime(live, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    run(second)
    assert sorted(p.name for p in store.shards_dir(plan.run_id).glob("*.json")) == [
        "0.json", "1.json"]
