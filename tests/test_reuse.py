"""`bfd audit` of an already computed run without torch, timm or Prefect (bfd/cli_reuse.py):
the rows and the report it writes are those the flow writes for the same request, and any
change of what the run depends on (a weights file, an image, a damaged shard) sends the
audit back through the flow."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from checkpoints import AUDIT, make_checkpoints
from conftest import bfd_without_prefect_api, interrupted_at, run_cli
from PIL import Image

from bfd.images import sample_array
from bfd.queries import run_query, run_sql
from bfd.storage import SEEN_FIGURES, Store, read_audits, read_drift, read_table

REPO = Path(__file__).resolve().parents[1]


def image_folder(folder: Path, n: int = 6) -> Path:
    """``n`` PNG crops of the embedded samples, as a user's image folder."""
    folder.mkdir(parents=True)
    for k in range(n):
        Image.fromarray(sample_array("astronaut", k + 1)).save(folder / f"img{k}.png")
    return folder


def options(images: Path, weights: Path, store: Path, step: int) -> list[str]:
    return ["audit", "--model", AUDIT["model"], "--weights", str(weights), "--images",
            str(images), "--img-size", str(AUDIT["img_size"]), "--layers", "0", "--dtype",
            "float32", "--images-per-chunk", "3", "--series", "s", "--step", str(step),
            "--store", str(store)]


def report(text: str, audit: dict, previous: dict) -> str:
    """The printed report of ``audit`` without its own id and step, nor its dashboard line
    (one of the two audits compared rebuilds the dashboard)."""
    text = text.replace(audit["audit_id"], "<audit>").replace(previous["audit_id"], "<prev>")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("dashboard: "))
    return re.sub(rf"\(step {audit['step']}\)", "(step N)", text).strip()


@pytest.mark.slow
def test_reused_audit_writes_what_the_flow_writes(tmp_path, prefect_harness, capsys):
    """Audit 1 (weights A) and audit 2 (weights B, computed) run the flow; audit 3 (weights B
    again, step 200) is recorded without Prefect; audit 4 (the same request, step 150) runs
    the flow's reuse branch. 3 and 4 both follow audit 1: the same drift rows, the same audit
    row but for ids, times and the flow run, the same report."""
    paths = make_checkpoints(tmp_path / "ckpts")
    images, store = image_folder(tmp_path / "images"), tmp_path / "store"
    flow = [*options(images, paths[1], store, 300), "--no-dashboard"]
    assert run_cli([*options(images, paths[0], store, 100), "--no-dashboard"], capsys)[0] == 0
    assert run_cli(flow, capsys)[0] == 0
    runs_before = read_table(Store(store), "runs").to_pylist()
    assert len(list((store / "request_keys").glob("*.json"))) == 2  # one per planned request

    ran, out_fast, err_fast = bfd_without_prefect_api(options(images, paths[1], store, 200),
                                                      tmp_path)
    checked = ran.pop("checked")
    assert ran == {"code": 0, "loaded": []}  # neither torch, timm nor Prefect imported
    assert "is already computed: the audit is recorded without a Prefect flow run" in err_fast
    assert (store / "dashboard" / "index.html").is_file()  # refreshed without the flow too
    assert f"\ndashboard: {store / 'dashboard' / 'index.html'}  (open it in a browser" in out_fast
    code, out_flow, _ = run_cli([*options(images, paths[1], store, 150), "--no-dashboard"],
                                capsys)
    assert code == 0

    assert read_table(Store(store), "runs").to_pylist() == runs_before  # nothing recomputed
    first, computed, fast, reused = (
        {a["step"]: a for a in read_audits(Store(store), "s")}[step] for step in
        (100, 300, 200, 150))
    assert fast["flow_run_id"] is None and reused["flow_run_id"] is not None
    # the audit recorded without Prefect began with the command, before its reuse check
    assert len(checked) == 1 and fast["started_at"].timestamp() <= checked[0]
    assert computed["run_id"] != first["run_id"]
    keys = ("series", "run_id", "status", "prev_audit_id", "n_flagged", "trigger")
    assert [fast[k] for k in keys] == [reused[k] for k in keys] == [
        "s", computed["run_id"], "complete", first["audit_id"], computed["n_flagged"], "cli"]
    # what each saw of the run: its published version, options and figures
    seen = ("results_version", "decompose_json", *(name for name, _ in SEEN_FIGURES))
    assert [fast[k] for k in seen] == [reused[k] for k in seen] == [computed[k] for k in seen]
    assert computed["results_version"] and computed["n_layers"] == 1

    def drift(audit: dict) -> list[dict]:
        rows = read_drift(Store(store), "s", audit["audit_id"])
        return sorted(({k: v for k, v in r.items() if k != "audit_id"} for r in rows),
                      key=lambda r: (r["layer"], r["head"] if r["head"] is not None else -1,
                                     r["metric"]))

    assert drift(fast) == drift(reused) == drift(computed)
    assert fast["n_flagged"] > 0  # the planted change of checkpoint B flags, in both
    assert report(out_fast, fast, first) == report(out_flow, reused, first)

    # Ctrl-C once the audit is recorded: its line names the audit, not "a rerun resumes"
    ctrl_c_names_the_recorded_audit(lambda step: options(images, paths[1], store, step), store,
                                    tmp_path, capsys)


def ctrl_c(argv: list[str], at: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``bfd argv`` as a process of its own (its Ctrl-C: ``bfd.cli_interrupt``), without a
    Prefect API, that sends itself SIGINT when it calls the function ``at`` (``module:name``,
    wrapped before the command starts), a moment before calling it."""
    code = interrupted_at(at, argv)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def ctrl_c_names_the_recorded_audit(argv, store: Path, tmp_path: Path, capsys) -> None:
    """Ctrl-C of ``bfd audit argv(step)`` (its run computed) once its audit is recorded, and while
    it is being written, and of the flow ``audit`` once it wrote it: exit 130, the audit
    recorded, and the last line names it (``bfd.cli_interrupt.recorded``)."""
    from bfd.cli_interrupt import MESSAGE, NOT_RECORDED, recorded

    def new_audits(before: list[dict]) -> list[dict]:
        ids = {a["audit_id"] for a in before}
        return [a for a in read_audits(Store(store), "s") if a["audit_id"] not in ids]

    # a SIGINT right after the audit's row is written (the dashboard's refresh comes next),
    # then one while it is written (held until it is)
    for k, at in enumerate(("bfd.report.dashboard:refresh_outputs",
                            "bfd.tasks.audits:write_audit")):
        before = read_audits(Store(store), "s")
        proc = ctrl_c(argv(400 + k), at, tmp_path)
        assert proc.returncode == 130, (at, proc.stderr)
        (new,) = new_audits(before)
        assert new["status"] == "complete" and new["step"] == 400 + k
        lines = proc.stderr.splitlines()
        assert lines[-1] == recorded(new), (at, proc.stderr)
        assert f"audit {new['audit_id']} of series s (step {400 + k}) was recorded" in lines[-1]
        assert MESSAGE not in proc.stderr and NOT_RECORDED not in proc.stderr
    # before its write: nothing recorded, and said so
    before = read_audits(Store(store), "s")
    proc = ctrl_c(argv(402), "bfd.tasks.audits:audit_row", tmp_path)
    assert proc.returncode == 130 and proc.stderr.splitlines()[-1] == NOT_RECORDED
    assert new_audits(before) == []

    # the flow's path (here in-process: Ctrl-C is a KeyboardInterrupt), right after the write
    import bfd.flows.audit as flow

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    before, publish = read_audits(Store(store), "s"), flow.publish_artifacts
    flow.publish_artifacts = interrupted
    try:
        code, _, err = run_cli([*argv(403), "--no-dashboard"], capsys)
    finally:
        flow.publish_artifacts = publish
    (new,) = new_audits(before)
    assert code == 130 and new["status"] == "complete" and new["flow_run_id"] is not None
    assert err.splitlines()[-1] == recorded(new), err


@pytest.mark.slow
def test_an_audit_keeps_what_it_saw_when_its_run_is_decomposed_again(tmp_path, prefect_harness,
                                                                     capsys):
    """Audit 1's run decomposed again with ``--prefix include``: audit 1's history keeps the
    figures it saw, and the next audit (another checkpoint) is not compared with it (its run
    no longer holds what audit 1 saw)."""
    paths = make_checkpoints(tmp_path / "ckpts")
    images, store = image_folder(tmp_path / "images"), tmp_path / "store"
    assert run_cli([*options(images, paths[0], store, 100), "--no-dashboard"], capsys)[0] == 0
    before = run_query(store, "audit_history", {"series": "s"}).to_pylist()
    run_id = before[0]["run_id"]
    figures = "f_pp, f_pc, f_cp, f_cc, mean_f_pp, frac_pos_mean, frac_pos_resid_mean"
    saw = run_sql(store, f"SELECT {figures} FROM audits").to_pylist()
    assert saw == run_sql(store, f"SELECT {figures} FROM run_summary").to_pylist()
    assert saw[0]["frac_pos_resid_mean"] is not None  # kept by the audit (both sites)
    assert run_cli(["decompose", run_id, "--prefix", "include", "--store", str(store)],
                   capsys)[0] == 0
    now = run_sql(store, f"SELECT {figures} FROM run_summary WHERE run_id = $r",
                  {"r": run_id}).to_pylist()
    assert now != saw  # the run's figures changed (the prefix token counts as a position)
    assert run_query(store, "audit_history", {"series": "s"}).to_pylist() == before

    code, out, _ = run_cli([*options(images, paths[1], store, 200), "--no-dashboard"], capsys)
    assert code == 0
    second = {a["step"]: a for a in read_audits(Store(store), "s")}[200]
    note = f"previous audit's run {run_id} has been decomposed again with --prefix include"
    assert second["drift_note"].startswith(note) and note in out
    assert second["n_flagged"] == 0 and read_drift(Store(store), "s", second["audit_id"]) == []
    history = run_query(store, "audit_history", {"series": "s"}).to_pylist()
    assert [h["comparable"] for h in history] == [None, True]  # same inputs and prefix option
    assert history[0] == before[0]
    # audit 1's checkpoint again: its run, published with --prefix include, is decomposed
    # again with the audit's --prefix exclude; the audit says so in one line (it was quiet)
    code, _, err = run_cli([*options(images, paths[0], store, 300), "--no-dashboard"], capsys)
    assert code == 0
    said = [line for line in err.splitlines() if "decomposes it again" in line]
    assert said == [
        f"bfd: run {run_id} is published decomposed with --prefix include; this audit "
        f"decomposes it again with --prefix exclude, replacing those results (bfd decompose "
        f"{run_id} --store {store} --prefix include --control-seed 0 --compute-dtype float32 "
        "--jackknife-groups 16 --ci-target 0.02 publishes them again)"], err
    assert run_sql(store, f"SELECT {figures} FROM run_summary WHERE run_id = $r",
                   {"r": run_id}).to_pylist() == saw  # exclude's figures again


def audit_request(argv: list[str]):
    """The parsed arguments and typed config of ``bfd argv``, as cmd_audit builds them."""
    from bfd.cli import _extract_config, build_parser
    from bfd.cli_audits import audit_config

    args = build_parser().parse_args(argv)
    return args, audit_config(_extract_config(args))


@pytest.mark.slow
def test_any_change_of_the_inputs_sends_the_audit_through_the_flow(tmp_path, prefect_harness,
                                                                  capsys, monkeypatch):
    """A run is reused without the flow only while its weights file, its images and its
    stored shards are what the run was computed from."""
    from bfd.cli_reuse import computed_run_of

    paths = make_checkpoints(tmp_path / "ckpts")
    images, store = image_folder(tmp_path / "images"), tmp_path / "store"
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(paths[0].read_bytes())
    argv = [*options(images, weights, store, 1), "--no-dashboard"]

    def audited_run() -> str:
        assert run_cli(argv, capsys)[0] == 0
        return read_audits(Store(store), "s")[-1]["run_id"]

    def found() -> str | None:
        with monkeypatch.context() as m:
            m.delenv("PREFECT_API_URL")
            return computed_run_of(*audit_request(argv), str(store))

    first = audited_run()
    assert found() == first
    # a request the flow must run whatever the store holds
    for extra in (["-v"], ["--workers", "2"], ["--no-store-activations"]):
        with monkeypatch.context() as m:
            m.delenv("PREFECT_API_URL")
            where = ["-v", *argv] if extra == ["-v"] else [*argv, *extra]
            assert computed_run_of(*audit_request(where), str(store)) is None, extra
    assert computed_run_of(*audit_request(argv), str(store)) is None  # a Prefect API is set

    # a chunk file of the activations lost: the flow extracts that shard again
    chunk = next(p for p in sorted((store / "bfd.zarr" / first / "attn_in" / "c").rglob("*"))
                 if p.is_file())
    chunk.rename(chunk.with_name("moved"))
    assert found() is None
    chunk.with_name("moved").rename(chunk)
    assert found() == first

    # the weights file changed in place (checkpoint B's tensors): a new key, a new run
    from safetensors.torch import save_file
    from torch import load

    save_file(load(paths[1])["model"], weights)
    assert found() is None
    second = audited_run()
    assert second != first and found() == second

    # one image changed in place: a new key, a new run
    pixels = np.asarray(Image.open(images / "img2.png")).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(images / "img2.png")
    assert found() is None
    third = audited_run()
    assert third not in (first, second) and found() == third


def test_a_run_made_with_model_args_is_reused_without_the_flow(tmp_path, prefect_harness,
                                                                capsys, monkeypatch):
    """A run made with --model-arg is found from its request key as any other: its stored
    request's model arguments agree with the key's (they were compared with the key's empty
    ``extra``, so such a run always went back through the flow)."""
    from bfd.cli_reuse import computed_run_of, extracted_run_of

    store = tmp_path / "store"
    argv = [*options("samples", "random", store, 1), "--n-images", "6", "--model-arg",
            "depth=3", "--no-dashboard"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    (audit,) = read_audits(Store(store), "s")
    monkeypatch.delenv("PREFECT_API_URL")
    assert computed_run_of(*audit_request(argv), str(store)) == audit["run_id"]
    extract = ["extract", *argv[1:argv.index("--series")], "--n-images", "6", "--model-arg",
               "depth=3", "--store", str(store)]
    assert extracted_run_of(*audit_request(extract), str(store)) == audit["run_id"]


@pytest.mark.slow
def test_an_audit_with_other_decompose_options_is_computed_and_not_compared(
        tmp_path, prefect_harness, capsys, monkeypatch):
    """`bfd audit --prefix include` (bfd audit took no decompose option) of a run published
    with the defaults is not taken as already computed: the flow decomposes it again with
    them, and its drift says it compared nothing (shares over other positions). Of the run
    published with --prefix include since, it is recorded without Prefect and compared; an
    audit with the defaults after them skips both, and says so."""
    from bfd.cli_reuse import computed_run_of

    store = tmp_path / "store"

    def argv(step: int, *extra: str) -> list[str]:
        return [*options("samples", "random", store, step), "--n-images", "6", *extra,
                "--no-dashboard"]

    def computed(step: int, *extra: str) -> str | None:
        with monkeypatch.context() as m:
            m.delenv("PREFECT_API_URL")
            return computed_run_of(*audit_request(argv(step, *extra)), str(store))

    include = ("--prefix", "include")
    assert run_cli(argv(1), capsys)[0] == 0
    (first,) = read_audits(Store(store), "s")
    rid = first["run_id"]
    assert computed(2) == rid and computed(2, *include) is None

    code, out, err = run_cli(argv(2, *include), capsys)
    assert code == 0, err
    assert (f"bfd: run {rid} is published decomposed with --prefix exclude; this audit "
            "decomposes it again with --prefix include") in err
    second = read_audits(Store(store), "s")[-1]
    note = ("previous audit's shares were decomposed with --prefix exclude, this audit's with "
            "--prefix include; not compared")
    assert second["run_id"] == rid and second["drift_note"].startswith(note)
    assert f"\ndrift: {note}" in out
    assert json.loads(second["decompose_json"])["prefix"] == "include"
    assert computed(3, *include) == rid and computed(3) is None

    monkeypatch.delenv("PREFECT_API_URL")  # recorded without Prefect (no API configured)
    code, out, err = run_cli(argv(3, *include), capsys)
    assert code == 0, err
    assert "is already computed: the audit is recorded without a Prefect flow run" in err
    third = read_audits(Store(store), "s")[-1]
    assert third["flow_run_id"] is None and third["drift_note"] is None
    assert (third["run_id"], third["prev_audit_id"]) == (rid, second["audit_id"])
    monkeypatch.undo()

    code, out, err = run_cli(argv(4), capsys)
    assert code == 0, err
    fourth = read_audits(Store(store), "s")[-1]
    assert (fourth["prev_audit_id"], fourth["drift_note"]) == (first["audit_id"], None)
    why = "shares over other positions (--prefix include, not exclude)"
    assert (f"\ndrift: 0 value(s) flagged against audit {first['audit_id']} (step 1), the "
            f"latest comparable; skipped 2 audits not comparable ({second['audit_id']} at "
            f"step 2: {why}; {third['audit_id']} at step 3: {why})\n") in out, out


PREFECT_SETUPS = {
    "nothing": ({}, {}),
    "environment": ({"PREFECT_API_URL": "http://127.0.0.1:9/api"}, {}),
    "active profile": ({}, {"profiles.toml": 'active = "srv"\n[profiles.srv]\n'
                            'PREFECT_API_URL = "http://127.0.0.1:9/api"\n'}),
    "inactive profile": ({}, {"profiles.toml": 'active = "eph"\n[profiles.eph]\n'
                              'PREFECT_SERVER_EPHEMERAL_ENABLED = "true"\n[profiles.srv]\n'
                              'PREFECT_API_URL = "http://127.0.0.1:9/api"\n'}),
    "PREFECT_PROFILE": ({"PREFECT_PROFILE": "srv"},
                        {"profiles.toml": 'active = "eph"\n[profiles.eph]\n[profiles.srv]\n'
                         'PREFECT_API_URL = "http://127.0.0.1:9/api"\n'}),
    "prefect.toml": ({}, {"cwd/prefect.toml": '[api]\nurl = "http://127.0.0.1:9/api"\n'}),
    ".env": ({}, {"cwd/.env": "PREFECT_API_URL=http://127.0.0.1:9/api\n"}),
}


@pytest.mark.parametrize("setup", PREFECT_SETUPS)
def test_prefect_api_is_seen_as_prefect_sees_it(tmp_path, setup):
    """``prefect_api_configured`` (read without Prefect) agrees with Prefect's own settings."""
    env_extra, files = PREFECT_SETUPS[setup]
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    for folder in (home, cwd):
        folder.mkdir()
    for name, text in files.items():
        (tmp_path / name if name.startswith("cwd/") else home / name).write_text(text)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") or k == "PREFECT_SERVER_ANALYTICS_ENABLED"}
    env |= {"PREFECT_HOME": str(home), "PYTHONPATH": str(REPO), **env_extra}
    code = ("from bfd.flows.server import prefect_api_configured\n"
            "mine = prefect_api_configured()\n"
            "from prefect.settings import PREFECT_API_URL\n"
            "print(mine, bool(PREFECT_API_URL.value()))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    mine, prefects = proc.stdout.split()
    assert mine == prefects, setup
    assert mine == str(setup not in ("nothing", "inactive profile"))


def test_a_new_request_hashes_its_weights_and_images_once(tmp_path):
    """On a store with request keys, the CLI keys a request (hashing the weights file and
    every image) before the flow plans it: the planner reuses those digests instead of reading
    the files again, and records the same request, run id and key as a fresh hashing does."""
    import hashlib
    from dataclasses import replace

    from bfd.files import bytes_hashed
    from bfd.images import list_images, manifest_sha256
    from bfd.storage import read_request, read_request_key
    from bfd.tasks.extract import ExtractConfig, prepare_run
    from bfd.tasks.request_key import key_of_config

    weights = make_checkpoints(tmp_path / "ckpts")[0]
    images, store = image_folder(tmp_path / "images"), tmp_path / "store"
    cfg = ExtractConfig(model=AUDIT["model"], weights=str(weights), images=str(images),
                        img_size=AUDIT["img_size"], layers="0", dtype="float32",
                        images_per_chunk=3)
    files = [weights, *sorted(images.iterdir())]
    settle(files)
    before = bytes_hashed()
    key, inputs = key_of_config(cfg.to_dict())
    keyed = bytes_hashed()
    assert keyed - before == sum(p.stat().st_size for p in files)  # each file read once
    plan = prepare_run(str(store), cfg)
    assert bytes_hashed() == keyed  # the planner read none of them again

    request = read_request(Store(store), plan.run_id)
    assert request.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert request.images_sha256 == manifest_sha256(
        [replace(r, sha256=hashlib.sha256(Path(r.path).read_bytes()).hexdigest())
         for r in list_images(str(images))])
    assert read_request_key(Store(store), key) == plan.run_id
    assert inputs["weights_sha256"] == request.weights_sha256


@pytest.mark.slow
def test_a_new_audit_request_walks_its_image_folder_once(tmp_path, prefect_harness, capsys):
    """``bfd audit`` of a new request lists its image folder for the request check and in
    the flow's planner (and first for the request key, on a store with request keys and no
    Prefect API): one walk of the folder serves them all (``bfd.image_folders``; two walks
    here without it), and the run holds every image of it."""
    from bfd.image_folders import walks

    weights = make_checkpoints(tmp_path / "ckpts")[0]
    images, store = image_folder(tmp_path / "images"), tmp_path / "store"
    past = time.time_ns() - 60 * 10**9
    os.utime(images, ns=(past, past))  # a user's folder, not changed within the last seconds
    before = walks()
    code, _, err = run_cli([*options(images, weights, store, 100), "--no-dashboard"], capsys)
    assert code == 0, err
    assert walks() - before == 1
    (audit,) = read_audits(Store(store), "s")
    rows = [r for r in read_table(Store(store), "images").to_pylist()
            if r["run_id"] == audit["run_id"]]
    assert sorted(r["image_id"] for r in rows) == sorted(p.name for p in images.iterdir())


def test_a_file_changed_in_place_is_hashed_again(tmp_path):
    """A remembered digest is not served for a file rewritten since, even with its size and
    modification time as they were, nor for another file put at its path."""
    import hashlib

    from bfd.files import bytes_hashed, sha256_file

    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 4096)
    settle([path])
    st = path.stat()
    assert sha256_file(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    with open(path, "r+b") as f:  # the same inode, size and mtime; other bytes
        f.write(b"b")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns
    assert sha256_file(path) == hashlib.sha256(b"b" + b"a" * 4095).hexdigest()
    other = tmp_path / "other.bin"
    other.write_bytes(b"c" * 4096)
    os.replace(other, path)
    assert sha256_file(path) == hashlib.sha256(b"c" * 4096).hexdigest()

    # a file hashed in the tick of its last write is hashed again next time
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"d" * 4096)
    before = bytes_hashed()
    assert sha256_file(fresh) == sha256_file(fresh)
    assert bytes_hashed() - before == 2 * 4096


def settle(paths: list[Path]) -> None:
    """Wait until ``paths`` last changed long enough ago for ``sha256_file`` to remember their
    digests (``bfd.files.SETTLED_NS``), as a user's checkpoint and images have."""
    from bfd.files import SETTLED_NS

    last = max(max(p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in paths)
    time.sleep(max(0.0, (last + SETTLED_NS - time.time_ns()) / 1e9 + 0.05))


@pytest.mark.slow
def test_extract_of_an_extracted_run_answers_without_prefect_and_a_damaged_one_repairs(
        tmp_path):
    """A second `bfd extract` of the same request has nothing to do: it says so without torch,
    timm or Prefect. With a chunk cut short, the flow extracts that shard again; the process
    (the real command, which skips the interpreter's teardown) ends without Prefect's
    'Error logging to API' for the repair's warning, its server stopped before the log
    was sent."""
    from bfd.storage import verify_run

    store = tmp_path / "store"
    argv = ["extract", "--model", AUDIT["model"], "--weights", "random", "--n-images", "6",
            "--img-size", str(AUDIT["img_size"]), "--layers", "0", "--dtype", "float32",
            "--images-per-chunk", "3", "--store", str(store)]
    first, out1, _ = bfd_without_prefect_api(argv, tmp_path)
    assert first == {"code": 0, "loaded": ["prefect", "timm", "torch"], "checked": []}
    again, out2, err2 = bfd_without_prefect_api(argv, tmp_path)
    assert again == {"code": 0, "loaded": [], "checked": []} and out2 == out1 and err2 == "", err2
    (run_id,) = re.findall(r"run (\S+) extracted into", out1)

    chunk = next(p for p in sorted((store / "bfd.zarr" / run_id / "attn_in").rglob("*"))
                 if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:10])
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bfd.cli", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"damaged, extracted again: {chunk}" in proc.stderr
    assert "Error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert verify_run(Store(store), run_id) == []


@pytest.mark.slow
def test_an_audit_that_repairs_a_damaged_shard_says_so(tmp_path, prefect_harness, capsys):
    """An audit of a computed run whose shard 1 was cut short goes back through the flow,
    which extracts that shard again: its line, its return and its report say the shard was
    repaired, not "reused, nothing recomputed"; the audit after it is reused again."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from bfd.flows.prefect_io import artifact_key
    from bfd.storage import verify_run

    images, store = image_folder(tmp_path / "images"), tmp_path / "store"

    def audit(step: int) -> tuple[str, dict]:
        code, out, err = run_cli([*options(images, "random", store, step), "--no-dashboard"],
                                 capsys)
        assert code == 0, err
        return out, {a["step"]: a for a in read_audits(Store(store), "s")}[step]

    out, first = audit(1)
    rid = first["run_id"]
    assert f"run {rid} computed" in out
    runs_before = read_table(Store(store), "runs").to_pylist()
    # shard 1 holds images 3-5 (--images-per-chunk 3): its chunk of layer 0, cut short
    chunk = store / "bfd.zarr" / rid / "attn_in" / "c" / "0" / "1" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    assert verify_run(Store(store), rid) != []

    out, second = audit(2)
    line = (f"run {rid} repaired: damaged shard 1 of its activations extracted again, "
            "results reused")
    assert line in out and "nothing recomputed" not in out, out
    assert second["run_id"] == rid and second["status"] == "complete"
    assert verify_run(Store(store), rid) == []
    assert read_table(Store(store), "runs").to_pylist() == runs_before  # results kept
    with get_client(sync_client=True) as client:
        key = ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key("audit", "s")]))
        reports = [x.data for x in client.read_artifacts(artifact_filter=key)
                   if x.type == "markdown"]
    assert any(f"- run: `{rid}` ({line.removeprefix(f'run {rid} ')})" in r for r in reports)
    assert any(f"- run: `{rid}` (computed)" in r for r in reports)

    out, _ = audit(3)
    assert f"run {rid} reused, nothing recomputed" in out


def store_files(store: Path) -> dict[str, tuple[int, int]]:
    """Every file of a store with its size and modification time."""
    return {str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_audit_checkpoints_with_nothing_to_do_answers_without_prefect(tmp_path, prefect_harness,
                                                                      capsys):
    """`bfd audit-checkpoints` of a folder already audited with the same request, without a
    Prefect API: the flow's line and exit status (2, with its left-out line, beside a
    truncated file), without importing torch, timm or Prefect (no temporary server, nothing in
    the Prefect home) and writing nothing to the store; its stdout is written line by line,
    so that in one pipe with stderr the line comes before the left-out line printed after it
    (block-buffered, it came last)."""
    folder = tmp_path / "ckpts"
    make_checkpoints(tmp_path / "made")
    folder.mkdir()
    (tmp_path / "made" / "step_100.safetensors").rename(folder / "step_100.safetensors")
    # a byte copy at another step: one request, audited once (at step 100), and said so
    # (trial 23: "4 already audited" where 3 audits were, and a gap at its step unexplained)
    shutil.copyfile(folder / "step_100.safetensors", folder / "step_200.safetensors")
    copy_said = (", 1 holds another file's weights, audited at that file's step, none at its "
                 "own: step_200.safetensors (the weights of step_100.safetensors)")
    store = tmp_path / "store"
    argv = ["audit-checkpoints", str(folder), "--model", AUDIT["model"], "--n-images", "6",
            "--img-size", "64", "--layers", "0", "--dtype", "float32", "--images-per-chunk",
            "6", "--store", str(store), "--no-dashboard"]
    code, out, err = run_cli([*argv, "--dry-run"], capsys)
    # the copy is not "already audited" in a new series (trial 33): counted apart
    assert code == 0 and "1 to audit, 0 already audited with the same request (" in out + err
    assert f"){copy_said}, 0 left out" in out + err, out + err
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "1 checkpoint(s) audited" in out, out + err
    assert f"0 already audited with the same request{copy_said}; store " in out, out
    home = tmp_path / "prefect-home"
    for bad in (False, True):
        if bad:  # a truncated checkpoint beside the audited one: left out, exit 2
            good = (folder / "step_100.safetensors").read_bytes()
            (folder / "step_50.safetensors").write_bytes(good[: len(good) // 2])
        # the flow (a Prefect API is configured here), then the same call without one
        code, flow_out, flow_err = run_cli(argv, capsys)
        assert code == (2 if bad else 0) and flow_out.startswith("nothing to do"), flow_out
        assert flow_out.rstrip().endswith(copy_said), flow_out
        before = store_files(store)
        ran, out, err = bfd_without_prefect_api(argv, tmp_path)
        assert ran == {"code": code, "loaded": [], "checked": []}
        assert (out + "\n", err) == (flow_out, flow_err)
        assert store_files(store) == before
        assert list(home.iterdir()) == []  # no temporary server, no Prefect database
    assert flow_err.startswith("bfd: error: left out: weights file ") and flow_err.count(
        "\n") == 1, flow_err

    # the command as a shell runs it into one pipe, stdout not made unbuffered for it
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PYTHONUNBUFFERED")}
    env |= {"PREFECT_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bfd.cli", *argv], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stdout == flow_out + flow_err


def test_the_checks_without_prefect_import_no_xarray_or_zarr(tmp_path):
    """What the commands above answer without Prefect (bfd.cli_reuse, the request identities
    and audits of bfd.tasks.audits) loads no xarray, pandas or Zarr either (2 s of imports)."""
    code = ("import sys\nimport bfd.cli_audits, bfd.cli_reuse, bfd.tasks.audits\n"
            "print(sorted(m for m in ('xarray', 'pandas', 'zarr', 'torch', 'timm', 'prefect')"
            " if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[]\n"


# the keys of `bfd audit --format json` (README, "Errors and exit codes"): a wrapper reads them
AUDIT_KEYS = ("audit_id", "series", "run_id", "step", "prev_audit_id", "prev_step", "n_flagged",
              "drift_note", "drift_compared", "skipped", "reused", "repaired", "how", "store",
              "results", "dashboard", "retention", "flagged")
CHECKPOINTS_KEYS = ("series", "n_files", "store", "compared", "audits", "bad", "dashboard",
                    "retention")


@pytest.mark.slow
def test_audit_format_json_is_the_audit_record_from_the_flow_and_without_prefect(
        tmp_path, prefect_harness, capsys):
    """`bfd audit --format json` and `bfd audit-checkpoints --format json`: stdout is one JSON
    object, the record of what was audited (the stored audit's id, series, run, step, previous
    audit, flags and note; where its results are), with the same keys from the flow and from
    an audit recorded without Prefect; the exit status is the text output's (3 on the drift
    gate, 2 for a checkpoint left out), the JSON printed all the same, and the report's lines
    stay off stdout (the warnings on stderr)."""
    paths = make_checkpoints(tmp_path / "made")
    images, store = image_folder(tmp_path / "images"), tmp_path / "store"

    def record(out: str) -> dict:
        assert out.count("\n") <= 1, out  # one line: the object alone
        found = json.loads(out)
        assert isinstance(found, dict)
        return found

    def stored(found: dict, series: str = "s") -> dict:
        (row,) = [a for a in read_audits(Store(store), series)
                  if a["audit_id"] == found["audit_id"]]
        for key in ("audit_id", "series", "run_id", "step", "prev_audit_id", "n_flagged",
                    "drift_note"):
            assert found[key] == row[key], key
        return row

    # the flow: the first audit of the series compares nothing, failing the gate (exit 3)
    code, out, err = run_cli([*options(images, paths[0], store, 100), "--no-dashboard",
                              "--format", "json", "--fail-if-not-compared"], capsys)
    assert code == 3 and "drift not compared (--fail-if-not-compared)" in err, err
    first = record(out)
    assert list(first) == list(AUDIT_KEYS)
    row = stored(first)
    assert row["flow_run_id"] is not None and first["prev_audit_id"] is None
    assert (first["how"], first["reused"], first["dashboard"]) == ("computed", False, None)
    assert first["flagged"] == []  # nothing compared
    # a first audit has no drift_note either: drift_compared says nothing was checked
    assert (first["drift_note"], first["drift_compared"]) == (None, False)
    assert first["store"] == str(store) and first["results"].startswith(f"{store}/bfd.zarr/")
    assert "with N=6 images the 95 % intervals" in err  # a warning, kept on stderr

    # the same request without Prefect: the run reused, the same keys, the dashboard named
    ran, out, err = bfd_without_prefect_api(
        [*options(images, paths[0], store, 200), "--format", "json", "--fail-on-drift"],
        tmp_path)
    assert {k: ran[k] for k in ("code", "loaded")} == {"code": 0, "loaded": []}, err
    fast = record(out)
    assert list(fast) == list(AUDIT_KEYS)
    assert stored(fast)["flow_run_id"] is None
    assert (fast["run_id"], fast["results"]) == (first["run_id"], first["results"])
    assert (fast["prev_audit_id"], fast["prev_step"], fast["n_flagged"]) == (
        first["audit_id"], 100, 0)
    assert fast["reused"] is True and fast["how"] == "reused, nothing recomputed"
    assert fast["drift_compared"] is True
    assert fast["dashboard"] == str(store / "dashboard" / "index.html")

    # audit-checkpoints: one object, its audits as bfd audit's with their checkpoint (the
    # file audited above, in a series of its own: its run reused)
    folder = paths[0].parent
    argv = ["audit-checkpoints", str(folder / "step_*.safetensors"), "--model",
            AUDIT["model"], "--images", str(images), "--img-size", str(AUDIT["img_size"]),
            "--layers", "0", "--dtype", "float32", "--images-per-chunk", "3", "--series", "c",
            "--store", str(store), "--no-dashboard", "--format", "json"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    done = record(out)
    assert list(done) == list(CHECKPOINTS_KEYS)
    (one,) = done["audits"]
    assert list(one) == [*AUDIT_KEYS, "checkpoint"]
    assert stored(one, "c")["trigger"] == "checkpoints"
    assert (one["run_id"], one["checkpoint"], one["step"], one["reused"]) == (
        first["run_id"], str(paths[0]), 100, True)
    assert (done["series"], done["n_files"], done["bad"]) == ("c", 1, [])
    # nothing to do, beside a truncated file (exit 2): the flow's object and the one said
    # without Prefect are the same
    good = paths[0].read_bytes()
    (folder / "step_50.safetensors").write_bytes(good[: len(good) // 2])
    code, flow_out, flow_err = run_cli(argv, capsys)
    assert code == 2 and flow_err.count("bfd: error: left out: weights file ") == 1, flow_err
    assert "nothing to do: every checkpoint" in flow_err  # stdout holds the object alone
    nothing = record(flow_out)
    assert list(nothing) == list(CHECKPOINTS_KEYS)
    assert (nothing["audits"], nothing["n_files"], len(nothing["bad"])) == ([], 2, 1)
    ran, out, err = bfd_without_prefect_api(argv, tmp_path)
    assert ran == {"code": 2, "loaded": [], "checked": []}
    # the same lines on stderr (the flow names the unreadable file before it starts)
    assert record(out) == nothing and sorted(err.splitlines()) == sorted(flow_err.splitlines())


def published_by_an_older_bfd(store: Path, run_id: str) -> None:
    """Makes ``run_id`` read as a bfd that recorded no method published it
    (bfd.core.method): its pointer without ``method`` and its ``runs`` table file without
    the column, as those versions wrote them (the file published again alone, so that the
    pointer records its bytes' sha256 as any publish does)."""
    from bfd.core.method import RESULTS_METHOD
    from bfd.storage import read_run_table, write_table

    pointer = store / "runs" / run_id / "published.json"
    record = json.loads(pointer.read_text())
    assert record.pop("method") == RESULTS_METHOD
    pointer.write_text(json.dumps(record))
    rows = read_run_table(Store(store), "runs", run_id)
    assert rows.column("method").to_pylist() == [RESULTS_METHOD]
    write_table(Store(store), "runs", rows.column("model")[0].as_py(), run_id,
                rows.drop_columns(["method"]))
    assert "method" not in json.loads(pointer.read_text())


def method_of(store: Path, run_id: str) -> tuple[int | None, int]:
    """The method a run's pointer records, and its ``runs`` row's in the SQL catalog."""
    pointer = json.loads((store / "runs" / run_id / "published.json").read_text())
    (row,) = run_sql(store, "SELECT method FROM runs WHERE run_id = $r", {"r": run_id}
                     ).to_pylist()
    return pointer.get("method"), row["method"]


@pytest.mark.slow
def test_a_run_an_older_bfd_published_is_computed_again_not_reused(tmp_path, prefect_harness,
                                                                    capsys, monkeypatch):
    """A run whose results an older bfd published (no method recorded: method 1) is not
    reused as computed by `bfd audit` (nor by its dry run, nor found without the flow): the
    audit decomposes it again from its stored activations, says so in one line, and its
    results then carry the current method; the next audit reuses it. A stats-only run is
    computed again from two forwards. Drift compares point shares, which the method did not
    change: the audit after is compared, not blocked."""
    from bfd.cli_reuse import computed_run_of
    from bfd.core.method import RESULTS_METHOD, UNRECORDED_METHOD

    store = tmp_path / "store"
    older = f"an older bfd (method {UNRECORDED_METHOD}; now {RESULTS_METHOD})"

    def argv(step: int, *extra: str) -> list[str]:
        return [*options("samples", "random", store, step), "--n-images", "6", *extra,
                "--no-dashboard"]

    def computed(step: int) -> str | None:
        with monkeypatch.context() as m:
            m.delenv("PREFECT_API_URL")
            return computed_run_of(*audit_request(argv(step)), str(store))

    assert run_cli(argv(1), capsys)[0] == 0
    (first,) = read_audits(Store(store), "s")
    rid = first["run_id"]
    assert method_of(store, rid) == (RESULTS_METHOD, RESULTS_METHOD)
    assert computed(2) == rid

    published_by_an_older_bfd(store, rid)
    assert method_of(store, rid) == (None, UNRECORDED_METHOD)  # read as the older method
    assert computed(2) is None  # not found as computed without the flow
    code, out, _ = run_cli([*argv(2), "--dry-run"], capsys)
    assert code == 0
    assert (f"\nnote: run {rid} was published by {older}: to decompose again, activations "
            "reused\n") in out, out
    activations = store_files(store / "bfd.zarr" / rid / "attn_in")

    code, out, err = run_cli(argv(2), capsys)
    assert code == 0, err
    assert (f"bfd: run {rid} was published by {older}: decomposed again, activations "
            "reused") in err.splitlines(), err
    second = read_audits(Store(store), "s")[-1]
    assert (f"run {rid} decomposed again (published by an older bfd, method "
            f"{UNRECORDED_METHOD}; now {RESULTS_METHOD}), activations reused\n") in out, out
    assert second["run_id"] == rid and second["results_version"] != first["results_version"]
    assert method_of(store, rid) == (RESULTS_METHOD, RESULTS_METHOD)
    assert store_files(store / "bfd.zarr" / rid / "attn_in") == activations  # not extracted
    # compared with the audit of the older method: its point shares are the method's too
    assert (second["prev_audit_id"], second["drift_note"], second["n_flagged"]) == (
        first["audit_id"], None, 0)

    assert computed(3) == rid
    code, out, _ = run_cli(argv(3), capsys)
    assert code == 0 and f"run {rid} reused, nothing recomputed" in out, out

    # a stats-only run (no activations kept): computed again from two forwards
    stats_only = ("--no-store-activations",)
    assert run_cli(argv(4, *stats_only), capsys)[0] == 0
    sid = read_audits(Store(store), "s")[-1]["run_id"]
    assert sid != rid
    published_by_an_older_bfd(store, sid)
    code, out, _ = run_cli([*argv(5, *stats_only), "--dry-run"], capsys)
    assert code == 0
    assert (f"\nnote: run {sid} was published by {older}: to compute again from two forward "
            "passes over its images (no activations kept)\n") in out, out
    code, out, err = run_cli(argv(5, *stats_only), capsys)
    assert code == 0, err
    assert (f"bfd: run {sid} was published by {older}: computed again from two forward "
            "passes over its images (no activations kept)") in err.splitlines(), err
    assert read_audits(Store(store), "s")[-1]["run_id"] == sid
    assert method_of(store, sid) == (RESULTS_METHOD, RESULTS_METHOD)
    code, out, _ = run_cli(argv(6, *stats_only), capsys)
    assert code == 0 and f"run {sid} reused, nothing recomputed" in out, out


@pytest.mark.slow
def test_audit_checkpoints_audits_again_a_checkpoint_an_older_bfd_computed(
        tmp_path, prefect_harness, capsys):
    """`bfd audit-checkpoints` counts a checkpoint audited with the same request as audited
    only when its run's results are of this bfd's method: one whose run an older bfd
    published is to audit again, in its dry run and in its run alike, and its audit
    decomposes the run again, activations reused; once that is done, nothing is to do."""
    from bfd.core.method import RESULTS_METHOD, UNRECORDED_METHOD

    folder, store = tmp_path / "ckpts", tmp_path / "store"
    make_checkpoints(tmp_path / "made")
    folder.mkdir()
    (tmp_path / "made" / "step_100.safetensors").rename(folder / "step_100.safetensors")
    argv = ["audit-checkpoints", str(folder), "--model", AUDIT["model"], "--n-images", "6",
            "--img-size", "64", "--layers", "0", "--dtype", "float32", "--images-per-chunk",
            "6", "--series", "c", "--store", str(store), "--no-dashboard"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "1 checkpoint(s) audited" in out, out + err
    (first,) = read_audits(Store(store), "c")
    rid = first["run_id"]
    published_by_an_older_bfd(store, rid)

    older = f"an older bfd (method {UNRECORDED_METHOD}; now {RESULTS_METHOD})"
    code, out, _ = run_cli([*argv, "--dry-run"], capsys)
    assert code == 0
    assert "1 checkpoint file(s): 1 to audit, 0 already audited with the same request" in out
    assert (f"  to audit: step 100  step_100.safetensors  (audited before, but its run was "
            f"published by {older}: its results are computed again)\n") in out, out
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert (f"bfd: run {rid} was published by {older}: decomposed again, activations "
            "reused") in err.splitlines(), err
    assert "1 checkpoint(s) audited" in out, out
    again = read_audits(Store(store), "c")[-1]
    assert (again["run_id"], again["step"], again["prev_audit_id"], again["n_flagged"]) == (
        rid, 100, first["audit_id"], 0)
    assert method_of(store, rid) == (RESULTS_METHOD, RESULTS_METHOD)
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "nothing to do" in out + err, out + err


@pytest.mark.slow
def test_keep_activations_bounds_a_series_disk_and_keeps_every_result(
        tmp_path, prefect_harness, capsys):
    """`bfd audit --keep-activations K` (and `bfd drop-activations --keep K`): after each audit
    only the runs of the series' K latest audits (step order) and the run just audited keep
    their activations; the older runs keep their results, tables, audits and drift, and an
    audit of an older run's request extracts its activations again, bit for bit."""
    from bfd.storage import dropped

    paths = make_checkpoints(tmp_path / "made")
    images, store = image_folder(tmp_path / "images"), tmp_path / "store"
    zarr = store / "bfd.zarr"

    def activations(run_id: str) -> dict[str, bytes]:
        folder = zarr / run_id / "attn_in"
        return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*")
                if f.is_file()}

    runs, first = [], None
    for path, step in zip(paths, (100, 200, 300), strict=True):
        code, out, err = run_cli([*options(images, path, store, step), "--no-dashboard",
                                  "--keep-activations", "2"], capsys)
        assert code == 0, err
        runs.append(read_audits(Store(store), "s")[-1]["run_id"])
        first = first or activations(runs[0])
    assert len(set(runs)) == 3 and first
    # the third audit dropped the first run's activations, and said so
    assert f"run {runs[0]}: activations dropped, " in out
    assert "series s keeps the activations of its 2 latest runs; 1 run dropped, " in out
    assert [dropped(Store(store), r) is not None for r in runs] == [True, False, False]
    assert not (zarr / runs[0] / "attn_in").exists() and (zarr / runs[1] / "attn_in").exists()
    # its results, tables and audits are all there: the query of its layers answers
    assert run_query(str(store), "layer_profile", {"run_id": runs[0]}).num_rows == 1
    assert [a["run_id"] for a in read_audits(Store(store), "s")] == runs
    code, out, err = run_cli(["verify", runs[0], "--store", str(store)], capsys)
    assert code == 0 and "intact (activations dropped by bfd drop-activations" in out, out

    # by hand: the dry run names the run past the latest one and drops nothing
    code, out, err = run_cli(["drop-activations", "--keep", "1", "--series", "s", "--dry-run",
                              "--store", str(store)], capsys)
    assert (code, out) == (0, f"run {runs[1]}: activations would be dropped\nseries s keeps "
                           "the activations of its 1 latest run; would drop those of 1 run\n")
    assert dropped(Store(store), runs[1]) is None
    code, out, err = run_cli(["drop-activations", "--keep", "1", "--store", str(store)], capsys)
    assert code == 0 and out.startswith(f"run {runs[1]}: activations dropped, "), out
    assert [dropped(Store(store), r) is not None for r in runs] == [True, True, False]

    # an audit at step 50 of the first checkpoint again: its run, just audited, keeps its
    # activations, extracted again bit for bit, though step 300's run is the latest in step
    # order (kept too: K = 1)
    code, out, err = run_cli([*options(images, paths[0], store, 50), "--no-dashboard",
                              "--keep-activations", "1"], capsys)
    assert code == 0, err
    assert read_audits(Store(store), "s")[0]["run_id"] == runs[0]  # step 50: first in order
    assert [dropped(Store(store), r) is not None for r in runs] == [False, True, False]
    assert activations(runs[0]) == first

    # audit-checkpoints drops as each audit ends: steps 100 and 200 in series c, K = 1: the
    # second audit (its run's activations extracted again) drops the first's run, which no
    # series keeps (step 300's run is s's latest)
    code, out, err = run_cli(["audit-checkpoints", str(paths[0].parent / "step_[12]00.*"),
                              "--model", AUDIT["model"], "--images", str(images), "--img-size",
                              str(AUDIT["img_size"]), "--layers", "0", "--dtype", "float32",
                              "--images-per-chunk", "3", "--series", "c", "--store", str(store),
                              "--no-dashboard", "--keep-activations", "1"], capsys)
    assert code == 0, err
    assert [a["run_id"] for a in read_audits(Store(store), "c")] == runs[:2]
    assert [dropped(Store(store), r) is not None for r in runs] == [True, False, False]
    assert f"run {runs[0]}: activations dropped, " in out, out

    # refused in one line before any work
    for argv, said in (([*options(images, paths[0], store, 60), "--keep-activations", "0"],
                        "--keep-activations must be at least 1"),
                       (["drop-activations", runs[2], "--keep", "1", "--store", str(store)],
                        "give RUN_IDs or --keep K, not both"),
                       (["drop-activations", "--store", str(store)],
                        "name the runs (RUN_ID ...) or give --keep K"),
                       (["drop-activations", "--keep", "1", "--series", "nope", "--store",
                         str(store)], "the store has no audits of series 'nope'")):
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and said in err, (argv, err)
    assert len(read_audits(Store(store), "s")) == 4


@pytest.mark.slow
def test_a_copied_image_is_counted_once(tmp_path, prefect_harness, capsys):
    """A folder holding copies of its images (the same bytes under other names): each copy is
    skipped as a duplicate, said, and the figures and intervals are those of the images
    counted once; a folder of copies of one image is refused before any work (trial 27 F1:
    16 copies of one image gave every share 1 with the interval [1, 1])."""
    paths = make_checkpoints(tmp_path / "made")
    once = image_folder(tmp_path / "once")
    twice = tmp_path / "twice"
    shutil.copytree(once, twice)
    for k in (0, 3):  # after the originals in the listing's order
        shutil.copyfile(once / f"img{k}.png", twice / f"z-copy{k}.png")
    store = tmp_path / "store"
    runs = {}
    for name, folder in (("once", once), ("twice", twice)):
        argv = options(folder, paths[0], store, 1)
        argv[argv.index("--series") + 1] = name
        if name == "twice":  # the dry run says it beforehand
            code, out, err = run_cli([*argv, "--dry-run"], capsys)
            said = out + err
            assert code == 0 and ("note: 2 of the 8 listed images are copies (the same bytes) "
                                  "of another listed image and would be counted once: "
                                  "z-copy0.png (of img0.png), ...") in said, said
        code, out, err = run_cli([*argv, "--no-dashboard"], capsys)
        assert code == 0, err
        runs[name] = read_audits(Store(store), name)[-1]["run_id"]
        if name == "twice":
            assert ("bfd: warning: 2 of 8 images are copies (the same bytes) of another listed "
                    "image and were counted once") in err, err
            assert "could not be read" not in err
    images = run_sql(str(store), "SELECT image_id, status, error FROM images WHERE run_id = "
                     f"'{runs['twice']}' AND status <> 'ok' ORDER BY image_id").to_pylist()
    assert [(r["image_id"], r["status"]) for r in images] == [
        ("z-copy0.png", "skipped"), ("z-copy3.png", "skipped")]
    assert images[0]["error"].startswith("duplicate of img0.png (the same bytes, sha256 ")
    # the same figures, intervals included, as the images counted once
    sql = ("SELECT layer, site, frac_pos, frac_pos_adj, frac_pos_lo, frac_pos_hi, "
           "frac_int_adj_se FROM layers WHERE run_id = $run ORDER BY layer, site")
    heads = "SELECT layer, head, f_pp, f_cc, f_cc_se FROM heads WHERE run_id = $run ORDER BY 1, 2"
    for query in (sql, heads):
        a, b = (run_sql(str(store), query, {"run": runs[k]}).to_pylist() for k in runs)
        assert len(a) == len(b) > 0
        for ra, rb in zip(a, b, strict=True):
            assert ra.keys() == rb.keys()
            for k in ra:  # the site's name, and each figure to rounding
                assert ra[k] == rb[k] or ra[k] == pytest.approx(rb[k], rel=1e-12), (k, ra, rb)
    # copies of one image only: refused in one line, nothing recorded
    copies = tmp_path / "copies"
    copies.mkdir()
    for k in range(3):
        shutil.copyfile(once / "img0.png", copies / f"c{k}.png")
    argv = options(copies, paths[0], store, 2)
    argv[argv.index("--series") + 1] = "copies"
    code, out, err = run_cli([*argv, "--no-dashboard"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "the 3 images of" in err and "are copies of one file" in err, err
    assert read_audits(Store(store), "copies") == []
