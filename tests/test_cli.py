"""The ``bfd`` command: every expected failure is one ``bfd: error:`` line with code 2, and a
failed command leaves what a store already holds as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from conftest import env_kept

from bfd.cli import main
from bfd.queries import list_queries
from bfd.storage import (
    Store,
    list_runs,
    open_activations,
    read_image_manifest,
    read_model_tensors,
    read_request,
)

TINY = "test_vit"
REPO = Path(__file__).resolve().parents[1]
EXTRACT = ["extract", "--model", TINY, "--weights", "random", "--n-images", "8",
           "--img-size", "32", "--layers", "0,1", "--dtype", "float32",
           "--images-per-chunk", "4"]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with env_kept():
        code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("bfd: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """No cached weights and the hub offline, whatever this machine holds."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


@pytest.fixture(scope="module")
def extracted(prefect_harness, tmp_path_factory) -> tuple[Store, str]:
    store = Store(tmp_path_factory.mktemp("cli") / "store")
    with env_kept():
        assert main([*EXTRACT, "--store", str(store.root)]) == 0
    (rid,) = list_runs(store)
    return store, rid


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "vit_no_such_model", "--weights", "random"], ["unknown to timm"]),
        (["--model", "resnet18", "--weights", "random"], ["not supported", "ResNet"]),
        (["--model", "eva02_tiny_patch14_224", "--weights", "random"], ["rotary"]),
        (["--weights", "random"], ["--model is required"]),
        ([*EXTRACT[1:], "--layers", "0,x"], ["comma-separated ints", "'0,x'"]),
        ([*EXTRACT[1:], "--layers", "1,6"], ["layers must be in [0, 6)", "[6]"]),
        ([*EXTRACT[1:], "--images", "{tmp}/no_such_folder"], ["does not exist"]),
        ([*EXTRACT[1:], "--images-per-shard", "6"], ["multiple of images_per_chunk=4"]),
    ],
    ids=["unknown-model", "resnet", "eva", "no-model", "layers-not-ints", "layers-out-of-range",
         "no-images-folder", "shard-not-whole-chunks"],
)
def test_extract_errors_are_one_line(prefect_harness, tmp_path, capsys, args, needles):
    store = tmp_path / "store"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = run(["extract", *args, "--store", str(store)], capsys)
    assert_one_line_error(code, err, *needles)
    assert out == "" and not store.exists()


def test_pretrained_weights_offline_and_not_cached(prefect_harness, tmp_path, capsys,
                                                   empty_hf_cache):
    store = tmp_path / "store"
    code, _, err = run(["extract", "--model", TINY, "--img-size", "32", "--store", str(store)],
                       capsys)
    assert_one_line_error(code, err, "not in the Hugging Face cache", "offline",
                          "--weights random")
    assert not store.exists()


def test_sql_refuses_writes_in_one_line(extracted, capsys):
    store, _ = extracted
    code, _, err = run(["sql", "UPDATE runs SET status = 'x'", "--store", str(store.root)],
                       capsys)
    assert_one_line_error(code, err, "read-only", "UPDATE")


def test_query_list_and_missing_parameter(tmp_path, capsys):
    code, out, err = run(["query", "--list"], capsys)
    assert (code, err) == (0, "")
    listed = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert listed == list_queries() and "layer_profile" in listed
    assert "[model (required), run_id (optional)]" in out
    code, _, err = run(["query", "layer_profile", "--store", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "layer_profile", "model")


def _snapshot(store: Store, rid: str) -> dict:
    ds = open_activations(store, rid)
    return {
        "acts": {site: ds[site].values for site in ds.data_vars},
        "files": {str(p.relative_to(store.run_dir(rid))): (p.read_bytes(), p.stat().st_mtime_ns)
                  for p in store.run_dir(rid).rglob("*") if p.is_file()},
        "qkv": read_model_tensors(store, rid).qkv_weight.values,
        "images": read_image_manifest(store, rid),
    }


@pytest.mark.slow
def test_failed_commands_lose_nothing(extracted, capsys):
    store, rid = extracted
    before = _snapshot(store, rid)
    assert len(before["files"]) == 4  # request, image manifest, two shard markers
    assert all(np.isfinite(a).all() for a in before["acts"].values())

    # a real process, to see all it writes to stderr (Prefect's own logs included): the same
    # run with a shard size that disagrees with its completed shards
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"}
    argv = [*EXTRACT, "--images-per-shard", "8", "--store", str(store.root)]
    proc = subprocess.run([sys.executable, "-m", "bfd.cli", *argv], cwd=REPO, capture_output=True,
                          text=True, env={**env, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, "marker of shard", "the plan has")
    assert proc.stdout == ""

    for argv, needles in [
        ([*EXTRACT, "--images-per-chunk", "2", "--images-per-shard", "4"],
         ["differs in", "images_per_chunk"]),
        ([*EXTRACT, "--layers", "0,9"], ["layers must be in [0, 6)"]),
        (["sql", "DELETE FROM runs"], ["read-only"]),
        (["sql", "DROP TABLE heads"], ["read-only"]),
    ]:
        code, _, err = run([*argv, "--store", str(store.root)], capsys)
        assert_one_line_error(code, err, *needles)

    after = _snapshot(store, rid)
    assert list_runs(store) == [rid] and read_request(store, rid).layers == (0, 1)
    assert after["files"] == before["files"]
    assert after["images"] == before["images"]
    assert np.array_equal(after["qkv"], before["qkv"])
    for site, a in before["acts"].items():
        assert np.array_equal(after["acts"][site], a), site
    assert json.loads((store.run_dir(rid) / "request.json").read_text())["run_id"] == rid


@pytest.mark.slow
def test_decompose_publishes_and_caches_the_catalog(extracted, tmp_path, capsys):
    store, rid = extracted
    root = tmp_path / "store"
    shutil.copytree(store.root, root)  # the module's store stays as test_failed_* expects it
    code, out, err = run(["decompose", rid, "--store", str(root), "--device", "cpu"], capsys)
    assert code == 0, err
    assert f"run {rid} decomposed" in out and "warning" not in err
    snapshots = [p for p in (root / "catalog").glob("*.duckdb") if p.name != "current.duckdb"]
    assert len(snapshots) == 1
    before = snapshots[0].stat()
    code, out, _ = run(["runs", "--store", str(root)], capsys)
    assert code == 0 and rid in out
    after = snapshots[0].stat()  # the query attached the cached snapshot, it built nothing
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    code, _, err = run(["decompose", rid, "--store", str(root), "--device", "tpu"], capsys)
    assert_one_line_error(code, err, "device must be auto, cpu, cuda or cuda:K")

