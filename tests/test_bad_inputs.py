"""Every fault a hostile new user can cause, or meet, is one ``bfd: error:`` line naming what to
do, with exit 2 for a mistake in the request and 1 for a fault of the environment, and leaves
the store as it was (queried before and after)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from conftest import env_kept
from conftest import run_cli as cli
from locks import held_by_another_thread
from storebuilder import build_run, random_run_arrays

from bfd.cli import main
from bfd.queries import run_sql
from bfd.storage import Store, list_runs, run_lock

BASE = ["--model", "test_vit", "--weights", "random", "--n-images", "8", "--img-size", "32",
        "--layers", "0,1", "--dtype", "float32", "--images-per-chunk", "4"]
EXTRACT = ["extract", *BASE]
# audit-checkpoints takes no --weights: each checkpoint is the weights
CHECKPOINTS_BASE = [a for a in BASE if a not in ("--weights", "random")]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(prefect_harness, tmp_path_factory) -> dict[str, str]:
    """One small extracted and decomposed store, and the bad files the probes hand in."""
    tmp = tmp_path_factory.mktemp("bad-inputs")
    store = tmp / "store"
    with env_kept():
        assert main([*EXTRACT, "--store", str(store)]) == 0
        (rid,) = list_runs(Store(store))
        assert main(["decompose", rid, "--store", str(store)]) == 0
    model = timm.create_model("test_vit", pretrained=False, img_size=32)
    good = tmp / "good.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(good))
    data = good.read_bytes()
    (tmp / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp / "empty.safetensors").write_bytes(b"")
    (tmp / "garbage.safetensors").write_bytes(b"\x89not a safetensors file at all" * 20)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # good.pth stays finite
    state["blocks.1.attn.qkv.weight"][0, 0] = float("nan")
    safetensors.torch.save_file(state, str(tmp / "nan.safetensors"))
    torch.save(model.state_dict(), tmp / "good.pth")
    (tmp / "truncated.pth").write_bytes((tmp / "good.pth").read_bytes()[:1000])
    (tmp / "weights.txt").write_text("not weights")
    # junk under a checkpoint's name: random bytes (neither a zip nor a pickle), text, a zip
    junk = np.random.default_rng(0).bytes(5000)
    assert junk[:2] != b"PK" and junk[:1] != b"\x80"
    (tmp / "random.pth").write_bytes(junk)
    (tmp / "random.safetensors").write_bytes(junk)
    (tmp / "text.pth").write_text("not weights\n")
    with zipfile.ZipFile(tmp / "zip.pth", "w") as z:
        z.writestr("notes.txt", "a zip, but no torch checkpoint")
    torch.save(model.state_dict(), tmp / "legacy.pt", _use_new_zipfile_serialization=False)
    # junk alone: nothing to audit (beside a good one, the junk is left out: test_audit.py)
    (tmp / "ckpts").mkdir()
    shutil.copy(tmp / "random.pth", tmp / "ckpts" / "step_2.pth")
    (tmp / "good-ckpts").mkdir()
    shutil.copy(tmp / "good.pth", tmp / "good-ckpts" / "step_1.pth")
    (tmp / "binary-manifest.txt").write_bytes(bytes(range(256)) * 4)
    (tmp / "empty-folder").mkdir()
    (tmp / "a-file").write_text("I am a file")
    (tmp / "image.png").write_bytes(b"\x89PNG")
    return {"store": str(store), "rid": rid, "tmp": str(tmp), "file": str(tmp / "a-file"),
            "closed": f"tcp://127.0.0.1:{_closed_port()}"}


def state(root: str) -> tuple:
    """What SQL sees of the store, and the bytes of every file but the derived ones (the
    catalog snapshot, a dashboard, lock files)."""
    rows = run_sql(root, "SELECT r.run_id, r.status, r.n_images, "
                   "(SELECT count(*) FROM heads) AS heads, (SELECT count(*) FROM modes) "
                   "AS modes, (SELECT count(*) FROM layers) AS layers FROM runs AS r "
                   "ORDER BY r.run_id").to_pylist()
    files = {}
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] not in ("catalog", "dashboard") \
                and not p.name.endswith(".lock"):
            files[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return rows, files


def assert_one_line(code: int, err: str, expected: int, needles: tuple[str, ...]) -> None:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("bfd: error: ")]
    assert code == expected and len(errors) == 1, err
    assert all(line.startswith("bfd: ") for line in err.splitlines() if line.strip()), err
    for needle in needles:
        assert needle in errors[0], errors[0]


@dataclass(frozen=True)
class Probe:
    argv: list[str]
    needles: tuple[str, ...] = ()
    code: int = 2
    marks: list = field(default_factory=list)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
S = ["--store", "{store}"]
DEVICES = "must be auto, cpu, cuda or cuda:K"

# Mistakes in the request: exit 2, and nothing is read beyond what refuses them.
REQUEST = {
    "batch-size-0": Probe([*EXTRACT, "--batch-size", "0", *S], ("--batch-size", "positive")),
    "batch-size-negative": Probe([*EXTRACT, "--batch-size", "-3", *S], ("--batch-size",)),
    "images-per-chunk-0": Probe([*EXTRACT, "--images-per-chunk", "0", *S],
                                ("--images-per-chunk",)),
    "images-per-shard-0": Probe([*EXTRACT, "--images-per-shard", "0", *S],
                                ("--images-per-shard",)),
    "images-per-shard-splits-chunks": Probe([*EXTRACT, "--images-per-shard", "6", *S],
                                            ("multiple of images_per_chunk=4",)),
    "n-images-0": Probe([*EXTRACT, "--n-images", "0", *S], ("--n-images",)),
    "n-images-negative": Probe([*EXTRACT, "--n-images", "-5", *S], ("--n-images",)),
    "n-images-absurd": Probe([*EXTRACT, "--n-images", "100000000", *S], ("at most",)),
    "one-patch-position": Probe([*EXTRACT, "--img-size", "16", *S], ("1x1", "at least 2")),
    "img-size-off-patch": Probe([*EXTRACT, "--img-size", "20", *S], ("multiple of the patch",)),
    "img-size-0": Probe([*EXTRACT, "--img-size", "0", *S], ("--img-size",)),
    "device-unknown": Probe([*EXTRACT, "--device", "tpu", *S], ("--device", DEVICES)),
    "device-gpu": Probe([*EXTRACT, "--device", "gpu", *S], ("--device", DEVICES)),
    "device-cuda-absent": Probe([*EXTRACT, "--device", "cuda", *S], ("no CUDA",),
                                marks=[NO_CUDA]),
    "sites-unknown": Probe([*EXTRACT, "--sites", "foo", *S], ("--sites",)),
    "sites-empty": Probe([*EXTRACT, "--sites", ",", *S], ("--sites",)),
    "sites-twice": Probe([*EXTRACT, "--sites", "resid,resid", *S], ("--sites",)),
    "layers-not-ints": Probe([*EXTRACT, "--layers", "0,x", *S], ("comma-separated ints",)),
    "layers-out-of-range": Probe([*EXTRACT, "--layers", "0,99", *S], ("[99]",)),
    "workers-0": Probe([*EXTRACT, "--workers", "0", *S], ("--workers",)),
    "model-unknown": Probe(["extract", "--model", "vit_no_such", "--weights", "random", *S],
                           ("unknown to timm",)),
    "model-resnet": Probe(["extract", "--model", "resnet18", "--weights", "random", *S],
                          ("not supported",)),
    "model-missing": Probe(["extract", "--weights", "random", *S], ("--model is required",)),
    "model-escape": Probe(["audit", "--model", "vit\x1b[2Jtiny", "--weights", "random", *S],
                          ("--model must not hold control characters", "'vit\\x1b[2Jtiny'")),
    "weights-missing": Probe([*EXTRACT, "--weights", "{tmp}/none.pth", *S], ("does not exist",)),
    "weights-not-a-checkpoint": Probe([*EXTRACT, "--weights", "{tmp}/weights.txt", *S],
                                      ("weights.txt",)),
    "safetensors-truncated": Probe([*EXTRACT, "--weights", "{tmp}/truncated.safetensors", *S],
                                   ("truncated.safetensors", "not a readable")),
    "safetensors-empty": Probe([*EXTRACT, "--weights", "{tmp}/empty.safetensors", *S],
                               ("empty.safetensors", "not a readable")),
    "safetensors-garbage": Probe([*EXTRACT, "--weights", "{tmp}/garbage.safetensors", *S],
                                 ("garbage.safetensors", "not a readable")),
    "safetensors-nan": Probe([*EXTRACT, "--weights", "{tmp}/nan.safetensors", *S],
                             ("nan.safetensors", "blocks.1.attn.qkv.weight", "non-finite")),
    "pth-truncated": Probe([*EXTRACT, "--weights", "{tmp}/truncated.pth", *S],
                           ("truncated.pth", "not a readable")),
    "weights-random-bytes": Probe([*EXTRACT, "--weights", "{tmp}/random.pth", *S],
                                  ("random.pth", "not a readable torch checkpoint")),
    # an audit of junk weights is refused before it is recorded (the store is unchanged)
    "audit-weights-random-bytes": Probe(["audit", *BASE, "--weights", "{tmp}/random.pth", *S],
                                        ("--weights", "random.pth", "neither a torch zip")),
    "audit-weights-text": Probe(["audit", *BASE, "--weights", "{tmp}/text.pth", *S],
                                ("--weights", "text.pth", "not a readable torch checkpoint")),
    "audit-weights-zip": Probe(["audit", *BASE, "--weights", "{tmp}/zip.pth", *S],
                               ("zip.pth", "no data.pkl")),
    "audit-pth-truncated": Probe(["audit", *BASE, "--weights", "{tmp}/truncated.pth", *S],
                                 ("truncated.pth", "damaged or truncated zip")),
    "audit-safetensors-random-bytes": Probe(["audit", *BASE, "--weights",
                                             "{tmp}/random.safetensors", *S],
                                            ("random.safetensors", "not a readable")),
    "audit-safetensors-truncated": Probe(["audit", *BASE, "--weights",
                                          "{tmp}/truncated.safetensors", *S],
                                         ("truncated.safetensors", "truncated?")),
    "audit-safetensors-empty": Probe(["audit", *BASE, "--weights", "{tmp}/empty.safetensors",
                                      *S], ("empty.safetensors", "0 bytes")),
    "audit-checkpoints-only-junk": Probe(["audit-checkpoints", "{tmp}/ckpts", *CHECKPOINTS_BASE,
                                         *S], ("step_2.pth", "not a readable")),
    "audit-checkpoints-glob-matches-nothing": Probe(["audit-checkpoints",
                                                     "{tmp}/good-ckpts/nomatch_*.pth",
                                                     *CHECKPOINTS_BASE, *S],
                                                    ("no checkpoint file in", "nomatch_*")),
    "audit-checkpoints-images-missing": Probe(["audit-checkpoints", "{tmp}/good-ckpts",
                                               *CHECKPOINTS_BASE, "--images",
                                               "{tmp}/no-such-folder", *S],
                                              ("does not exist",)),
    "images-missing": Probe([*EXTRACT, "--images", "{tmp}/no-such-folder", *S],
                            ("does not exist",)),
    "images-binary-manifest": Probe([*EXTRACT, "--images", "{tmp}/binary-manifest.txt", *S],
                                    ("binary-manifest.txt", "not a text file")),
    "images-empty-folder": Probe([*EXTRACT, "--images", "{tmp}/empty-folder", *S],
                                 ("lists no images",)),
    "images-one-file": Probe([*EXTRACT, "--images", "{tmp}/image.png", *S], ("single image",)),
    "dask-address-malformed": Probe([*EXTRACT, "--dask-address", "no port here", *S],
                                    ("--dask-address must be",)),
    "extract-store-is-a-file": Probe([*EXTRACT, "--store", "{file}"], ("a-file", "is a file")),
    "audit-batch-size-0": Probe(["audit", *BASE, "--batch-size", "0", *S], ("--batch-size",)),
    "audit-one-patch-position": Probe(["audit", *BASE, "--img-size", "16", *S],
                                      ("at least 2",)),
    "audit-store-is-a-file": Probe(["audit", "--demo", "--store", "{file}"], ("is a file",)),
    "audit-demo-with-a-model": Probe(["audit", "--demo", "--model", "vit_small_patch16_224",
                                      "--n-images", "8", *S],
                                     ("--demo audits a fixed request", "--model, --n-images")),
    # the demo's figures are fixed too: its series would hold other options' as the demo's
    "audit-demo-with-decompose-options": Probe(["audit", "--demo", "--prefix", "include",
                                                "--control-seed", "3", *S],
                                               ("decomposed with the default options",
                                                "it takes no --prefix, --control-seed:")),
    # bfd audit's and audit-checkpoints' decompose options checked as bfd decompose's
    "audit-jackknife-groups-5": Probe(["audit", *BASE, "--jackknife-groups", "5", *S],
                                      ("jackknife groups must be", "got 5")),
    "audit-checkpoints-ci-target-0": Probe(["audit-checkpoints", "{tmp}/good-ckpts",
                                            *CHECKPOINTS_BASE, "--ci-target", "0", *S],
                                           ("ci_target must be a number > 0",)),
    "decompose-unknown-run": Probe(["decompose", "toy-0123456789abcdef", *S], ("toy-0123",)),
    "decompose-run-id-escapes": Probe(["decompose", "../x", *S], ("invalid run_id",)),
    "images-per-task-0": Probe(["decompose", "{rid}", "--images-per-task", "0", *S],
                               ("images_per_task",)),
    "images-per-task-negative": Probe(["decompose", "{rid}", "--images-per-task", "-2", *S],
                                      ("images_per_task",)),
    "decompose-device-unknown": Probe(["decompose", "{rid}", "--device", "tpu", *S],
                                      ("device", DEVICES)),
    "decompose-store-is-a-file": Probe(["decompose", "{rid}", "--store", "{file}"],
                                       ("is a file",)),
    "sql-parse-error": Probe(["sql", "SELEC 1", *S], ("Parser Error",)),
    "sql-binder-error": Probe(["sql", "SELECT nope FROM runs", *S], ("Binder Error", "nope")),
    "sql-catalog-error": Probe(["sql", "SELECT * FROM nothere", *S], ("Catalog Error",)),
    "sql-drop": Probe(["sql", "DROP TABLE runs", *S], ("read-only",)),
    "sql-copy": Probe(["sql", "COPY runs TO '{tmp}/out.csv'", *S], ("read-only",)),
    "sql-attach": Probe(["sql", "ATTACH '{tmp}/x.duckdb'", *S], ("read-only",)),
    "sql-error-function": Probe(["sql", "SELECT error('my own words')", *S], ("my own words",)),
    "sql-two-statements": Probe(["sql", "SELECT 1; SELECT 2", *S], ("one statement",)),
    "sql-store-is-a-file": Probe(["sql", "SELECT 1", "--store", "{file}"], ("is a file",)),
    "query-unknown": Probe(["query", "no_such_query", *S], ("no_such_query",)),
    "query-own-error": Probe(["query", "compare_models", "--param", "model_a=test_vit",
                              "--param", "model_b=test_vit", "--param", "bins=0", *S],
                             ("bins must be a positive integer",)),
    "query-param-without-value": Probe(["query", "layer_profile", "--param", "model", *S],
                                       ("key=value",)),
    "dashboard-out-is-a-file": Probe(["dashboard", "--out", "{file}", *S], ("a-file",
                                                                          "is a file")),
    # trial 25 (F7): the pages went among the run folders; a folder's own index.html and
    # assets were overwritten and its runs/*.heads.js removed
    "dashboard-out-inside-store": Probe(["dashboard", "--out", "{store}/runs", *S],
                                        ("is inside the store", "leave out --out")),
    "dashboard-out-foreign-folder": Probe(["dashboard", "--out", "{tmp}", *S],
                                          ("holds files that bfd dashboard did not write",
                                           ".bfd-dashboard.json")),
    "verify-unknown-run": Probe(["verify", "toy-0123456789abcdef", *S], ("not in store",)),
    "runs-store-is-a-file": Probe(["runs", "--store", "{file}"], ("is a file",)),
}

# Faults of the environment: exit 1, naming what is at fault.
ENVIRONMENT = {
    "extract-unreachable-cluster-no-work-left": Probe([*EXTRACT, "--dask-address", "{closed}",
                                                       *S], ("cannot reach", "{closed}"), 1),
    "decompose-unreachable-cluster": Probe(["decompose", "{rid}", "--dask-address", "{closed}",
                                            *S], ("cannot reach",), 1),
    "audit-unreachable-cluster": Probe(["audit", *BASE, "--dask-address", "{closed}", *S],
                                       ("cannot reach",), 1),
}


def _fill(argv: list[str], world: dict[str, str]) -> list[str]:
    return [a.format(**world) for a in argv]


def _params(probes: dict[str, Probe]):
    return [pytest.param(p, id=name, marks=p.marks) for name, p in probes.items()]


@pytest.mark.parametrize("probe", _params(REQUEST) + _params(ENVIRONMENT))
def test_probe_is_one_line_and_leaves_the_store_as_it_was(world, capsys, probe):
    before = state(world["store"])
    code, out, err = cli(_fill(probe.argv, world), capsys)
    assert_one_line(code, err, probe.code, tuple(n.format(**world) for n in probe.needles))
    assert state(world["store"]) == before


@pytest.mark.parametrize("name", [
    "good.safetensors", "truncated.safetensors", "empty.safetensors", "garbage.safetensors",
    "nan.safetensors", "random.safetensors", "good.pth", "legacy.pt", "truncated.pth",
    "random.pth", "text.pth", "zip.pth"])
def test_the_checkpoint_check_refuses_what_the_loaders_refuse(world, name):
    """``check_checkpoint`` reads a file's first bytes only; on each file here it agrees with
    the loader timm uses for its suffix (safetensors, or torch.load as timm calls it)."""
    from bfd.files import check_checkpoint

    path = Path(world["tmp"]) / name
    try:
        if path.suffix == ".safetensors":
            safetensors.torch.load_file(str(path))
        else:
            torch.load(path, map_location="cpu", weights_only=True)
        loads = True
    except Exception:  # noqa: BLE001 - whatever the loader raises: it refuses the file
        loads = False
    if loads:
        check_checkpoint(path)
    else:
        with pytest.raises(ValueError, match=f"{name}' is not a readable"):
            check_checkpoint(path)


# --- a damaged store: each probe on a copy; the command must not change it further ----------

def _truncate(path: Path, keep: int = 20) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _replace_with_file(path: Path) -> None:
    shutil.rmtree(path)
    path.write_text("in the way")


DAMAGE = {
    "truncated-marker": (lambda s, r: _truncate(s / "runs" / r / "shards" / "1.json"),
                         ["decompose", "{rid}"], ("shards/1.json", "bfd extract")),
    "truncated-images-json": (lambda s, r: _truncate(s / "runs" / r / "images.json"),
                              ["decompose", "{rid}"], ("images.json", "damaged",
                                                       "repair it with: bfd extract")),
    "binary-images-json": (lambda s, r: (s / "runs" / r / "images.json").write_bytes(
        bytes(range(256))), ["decompose", "{rid}"], ("images.json", "not a JSON file")),
    "truncated-request-json": (lambda s, r: _truncate(s / "runs" / r / "request.json"),
                               ["decompose", "{rid}"], ("request.json", "not a JSON file")),
    "deleted-chunk": (lambda s, r: (s / "bfd.zarr" / r / "attn_in/c/1/0/0/0").unlink(),
                      ["decompose", "{rid}"], ("attn_in/c/1/0/0/0", "missing", "bfd extract")),
    "truncated-chunk": (lambda s, r: _truncate(s / "bfd.zarr" / r / "resid/c/0/1/0/0", 500),
                        ["decompose", "{rid}"], ("resid/c/0/1/0/0", "500 bytes")),
    "verify-truncated-marker": (lambda s, r: _truncate(s / "runs" / r / "shards" / "0.json"),
                                ["verify", "{rid}"], ("1 fault",)),
    "runs-folder-is-a-file": (lambda s, r: _replace_with_file(s / "runs"),
                              EXTRACT, ("/runs is a file where a folder is expected",)),
    "zarr-folder-is-a-file": (lambda s, r: _replace_with_file(s / "bfd.zarr"),
                              EXTRACT, ("bfd.zarr is a file where a folder is expected",)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_store_probe_is_one_line_exit_1(world, tmp_path, capsys, damage):
    make, argv, needles = DAMAGE[damage]
    store = tmp_path / "store"
    shutil.copytree(world["store"], store)
    make(store, world["rid"])
    before = state(str(store))
    code, out, err = cli(_fill([*argv, "--store", str(store)], world), capsys)
    assert_one_line(code, err, 1, needles) if argv[0] != "verify" else None
    if argv[0] == "verify":
        assert code == 1 and all(line.startswith("fault: ") for line in out.splitlines())
        assert "Traceback" not in err and needles[0] in err
    assert state(str(store)) == before


def test_a_concurrent_decompose_of_one_run_is_refused(world, capsys):
    store = Store(world["store"])
    before = state(world["store"])
    with held_by_another_thread(run_lock(store, world["rid"])):
        code, _, err = cli(["decompose", world["rid"], "--store", world["store"]], capsys)
    assert_one_line(code, err, 1, ("busy", "another process", ".compute.lock"))
    assert state(world["store"]) == before


# --- a read-only store ---------------------------------------------------------------------

@contextlib.contextmanager
def read_only(path: str):
    """The folder made read-only for this process: a read-only bind mount as root (root
    ignores permission bits), the permission bits otherwise."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [Path(path), *Path(path).rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", path, path], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot make a read-only bind mount here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path, path], check=True)
        yield
    finally:
        subprocess.run(["umount", path], check=True)


@pytest.mark.parametrize(("argv", "code", "needles"), [
    (EXTRACT, 0, ()),
    (["decompose", "{rid}"], 1, ("cannot write", "writable")),
    (["audit", *BASE], 1, ("cannot write", "writable")),
    (["dashboard"], 1, ("cannot write", "dashboard")),
], ids=["extract-complete-run", "decompose", "audit", "dashboard"])
def test_read_only_store(world, tmp_path, capsys, argv, code, needles):
    store = str(tmp_path / "store")
    shutil.copytree(world["store"], store)
    run_sql(store, "SELECT 1")  # its catalog snapshot is cached while it can be written
    before = state(store)
    with read_only(store):
        got, out, err = cli(_fill([*argv, "--store", store], world), capsys)
    if code:
        assert_one_line(got, err, code, needles)
    else:
        assert got == 0 and "error" not in err and world["rid"] in out, err
    assert state(store) == before


def test_the_catalog_path_of_a_read_only_store_is_a_fault_of_the_environment(world, tmp_path,
                                                                             capsys):
    """`bfd catalog --path` of a read-only store whose catalog is not up to date: exit 1, as
    every read-only store (it was exit 2, a mistake in the request)."""
    store = str(tmp_path / "store")
    shutil.copytree(world["store"], store)
    shutil.rmtree(Path(store) / "catalog", ignore_errors=True)
    with read_only(store):
        got, _, err = cli(["catalog", "--path", "--store", store], capsys)
    assert_one_line(got, err, 1, ("cannot be written", "query it with bfd sql"))


def test_a_model_name_with_dollars_and_an_undefined_head_draw(prefect_harness, tmp_path,
                                                              capsys):
    """A ``$`` in a model name is text, not a mathtext formula; a pruned (undefined) head
    has NULL fractions: the dashboard, ``bfd plot`` and the query figures draw both."""
    from bfd.queries import run_query
    from bfd.report import head_map_figure

    acts, qkv, heads = random_run_arrays(7, L=2, N=6, T=10, d=16, H=2)
    for part in range(3):
        qkv[0, part * 16 + 8:part * 16 + 16] = 0
    store = Store(tmp_path / "store")
    model = "toy$vit_$x$"
    rid = build_run(store, acts, qkv, heads, model=model)
    with env_kept():
        assert main(["decompose", rid, "--store", str(store.root)]) == 0
    code, out, err = cli(["dashboard", "--store", str(store.root)], capsys)
    assert code == 0 and "Traceback" not in err, err
    code, out, err = cli(["plot", rid, "--out", str(tmp_path / "fig"), "--store",
                          str(store.root)], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert list((tmp_path / "fig").rglob("*.png"))
    table = run_query(str(store.root), "head_map", {"model": model})
    assert None in table.column("f_cc").to_pylist() or np.isnan(
        table.column("f_cc").to_numpy(zero_copy_only=False)).any()
    head_map_figure(table, tmp_path / "map.png")
    assert (tmp_path / "map.png").stat().st_size > 1000


def test_more_workers_than_cores_are_capped_with_a_warning(world, capsys):
    before = state(world["store"])
    code, out, err = cli([*EXTRACT, "--workers", "100000", "--store", world["store"]], capsys)
    assert code == 0 and world["rid"] in out, err
    (warning,) = [line for line in err.splitlines() if "--workers" in line]
    assert warning.startswith("bfd: warning: --workers 100000 is more than the")
    assert state(world["store"]) == before


def test_a_run_that_cannot_fit_on_the_disk_is_refused_before_any_write(world, tmp_path,
                                                                       capsys):
    """A small tmpfs (skipped where none can be mounted) holds far less than the run."""
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, out, err = cli([*EXTRACT, "--n-images", "64", "--store", str(disk / "store")],
                             capsys)
        # the tmpfs's free space in KiB, not "0.00 GiB"
        assert_one_line(code, err, 1, ("KiB free", "free space", str(disk)))
        assert not (disk / "store").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_listening_scheduler_address_passes_the_connect_check():
    from bfd.flows.runners import check_dask_address

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_dask_address(f"tcp://127.0.0.1:{port}")
        check_dask_address(f"127.0.0.1:{port}")
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        check_dask_address(f"tcp://127.0.0.1:{port}")
    check_dask_address("ucx://10.0.0.1:13337")  # another transport: left to Dask


def test_an_unreachable_prefect_api_is_a_fault_of_the_environment(tmp_path):
    """PREFECT_API_URL naming a port where no server listens: exit 1, one line that says
    what to do (it was exit 2, as if the command were wrong), and no store written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # no retries: Prefect's client tries a refused connection 5 more times, 2 + 4 + 8 + 16 s
    # apart (28 s of the test's 34 s), before the same error
    env |= {"PREFECT_API_URL": f"http://127.0.0.1:{_closed_port()}/api",
            "PREFECT_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_CLIENT_MAX_RETRIES": "0"}
    proc = subprocess.run([sys.executable, "-m", "bfd.cli", "audit", "--demo", "--store",
                           str(tmp_path / "store")], env=env, capture_output=True, text=True,
                          timeout=300)
    err = proc.stderr.strip().splitlines()[-1]  # after the demo's banner
    assert proc.returncode == 1, proc.stderr
    assert err.startswith("bfd: error:") and "Failed to reach API at" in err
    assert "prefect server start" in err and "unset PREFECT_API_URL" in err
    assert not (tmp_path / "store" / "tables").exists()
