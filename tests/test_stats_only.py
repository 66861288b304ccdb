"""``bfd audit --no-store-activations``: the decomposition fed by two forwards equals the one
read from a float32 store, and keeps no activations."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import bfd_without_prefect_api, env_kept, run_cli

from bfd import images as imgs
from bfd import models
from bfd.flows.audit import audit
from bfd.flows.decompose import decompose
from bfd.queries import run_sql
from bfd.storage import NOT_STORED, Store, list_runs, open_activations, open_results
from bfd.tasks.decompose import DecomposeOptions
from bfd.tasks.extract import ExtractConfig, _model, bytes_to_write, prepare_run
from bfd.tasks.stats_only import KEEP_IMAGES_BYTES, _Images, decompose_from_forward

CONFIG = {"model": "test_vit", "weights": "random", "images": "samples", "n_images": 12,
          "img_size": 32, "layers": "0,2", "dtype": "float32", "images_per_chunk": 4,
          "batch_size": 4, "device": "cpu"}


@pytest.mark.slow
def test_stats_only_equals_the_stored_path(prefect_harness, tmp_path, capsys):
    stored_root, stats_root = str(tmp_path / "stored"), str(tmp_path / "stats")
    options = {"seed": 3}  # the split-half and shuffle controls must see the same images
    stored = audit(dict(CONFIG), stored_root, decompose_options=options, dashboard=False)
    stats = audit(dict(CONFIG), stats_root, decompose_options=options, dashboard=False,
                  store_activations=False)
    assert stats["run_id"] != stored["run_id"]
    assert stats["reused"] is False and stored["reused"] is False  # both computed here

    a = open_results(Store(stored_root), stored["run_id"]).load()
    b = open_results(Store(stats_root), stats["run_id"]).load()
    assert set(a.data_vars) == set(b.data_vars) and a.sizes == b.sizes
    xr.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert a["head_type"].values.tolist() == b["head_type"].values.tolist()
    assert np.isfinite(b["frac_pos"].values).all()

    query = ("SELECT n_images, n_skipped, status, config_json FROM runs")
    (row,) = run_sql(stats_root, query).to_pylist()
    (ref,) = run_sql(stored_root, query).to_pylist()
    assert (row["n_images"], row["n_skipped"], row["status"]) == (12, 0, "complete")
    assert (ref["n_images"], ref["n_skipped"]) == (12, 0)
    config = json.loads(row["config_json"])
    assert config["request"]["extra"]["activations"] == "not stored"
    assert config["decompose"] == json.loads(ref["config_json"])["decompose"]
    statuses = run_sql(stats_root, "SELECT DISTINCT status FROM images").column(0).to_pylist()
    assert statuses == ["ok"]

    # nothing kept: no shard marked done, no chunk of activations written
    store = Store(stats_root)
    assert not list(store.shards_dir(stats["run_id"]).glob("*.json"))
    acts = open_activations(store, stats["run_id"])
    assert all(np.isnan(acts[site].values).all() for site in acts.data_vars)
    with pytest.raises(ValueError, match="kept no activations"):
        decompose(stats["run_id"], stats_root)

    # published with other options than the defaults (--control-seed 3): verify's repair
    # gives them (it said that bfd audit does not take them, and to run the flow instead)
    from bfd.storage import read_pointer

    table = Path(stats_root) / read_pointer(store, stats["run_id"])["tables"]["heads"]
    table.write_bytes(b"PAR1 not really parquet")
    code, _, err = run_cli(["verify", stats["run_id"], "--store", stats_root], capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert err.endswith(f" --control-seed 3 --store {stats_root}\n"), err


def _planned(root: str, **over):
    cfg = ExtractConfig(**{**CONFIG, "images_per_chunk": 4, "batch_size": 3,
                           "extra": dict(NOT_STORED), **over})
    return cfg, prepare_run(root, cfg)


def test_images_kept_up_to_the_bound_and_the_rest_decoded_again(tmp_path):
    """The second pass sees the first pass's batches, whether kept or decoded again; what is
    kept ends on a chunk boundary, where decoding again starts the same batches."""
    cfg, plan = _planned(str(tmp_path))
    model, _ = _model(cfg, "cpu")
    records = [imgs.ImageRecord(**r) for r in plan.records]
    one = 3 * 32 * 32 * 4  # bytes of one float32 image at img_size 32
    # batches of 3 that never cross a chunk of 4: [0, 3) [3, 4) [4, 7) [7, 8) [8, 11) [11, 12)
    for bound, cut in [(0, 0), (7 * one, 4), (8 * one, 8), (12 * one, 12)]:
        images = _Images(cfg, records, models.transform(model), 0, bound)
        first = [(b.indices, b.images.clone()) for b in images.first()]
        assert [i for i, _ in first] == [[0, 1, 2], [3], [4, 5, 6], [7], [8, 9, 10], [11]]
        assert images.cut == cut
        assert sum(len(b.indices) for b in images.kept) == cut
        assert sum(b.images.nbytes for b in images.kept) <= bound
        again = list(images.again())
        assert [b.indices for b in again] == [i for i, _ in first]
        for (_, x), b in zip(first, again, strict=True):
            assert torch.equal(x, b.images)


def test_an_image_changed_between_the_two_forwards_fails_the_run(tmp_path):
    """The images beyond those kept are decoded again for the second forward. One that
    changed in between did not decode there (its bytes no longer those listed) and was left
    out of the second pass alone: the sums mixed two image sets, the shares moved, and the
    image still counted ok (trial 24, F1: frac_pos_adj 2.8 times its value). One that did
    not decode the first time and does the second, the same. Either fails the run, naming
    the image."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(imgs.sample_array("astronaut", i + 1)).save(folder / f"im{i}.png")
    cfg = ExtractConfig(**{**CONFIG, "images": str(folder), "n_images": 8})
    model, _ = _model(cfg, "cpu")
    records = imgs.list_images(str(folder), 8)
    original = (folder / "im5.png").read_bytes()
    for when in ("between", "before"):
        images = _Images(cfg, records, models.transform(model), 0, 0)  # nothing kept
        if when == "before":  # changed since listing: not decoded by the first forward
            (folder / "im5.png").write_bytes(original[:-1] + b"x")
        first = list(images.first())
        assert sum(len(b.indices) for b in first) == (8 if when == "between" else 7)
        if when == "between":
            (folder / "im5.png").write_bytes(original[:-1] + b"x")
            said = "did not decode the second time (.*changed since listing.*)"
        else:
            (folder / "im5.png").write_bytes(original)
            said = "decoded the second time, not the first (.*changed since listing.*)"
        with pytest.raises(ValueError, match=f"image im5.png {said}, between the two forward "
                                             "passes of --no-store-activations: the passes"):
            list(images.again())
        (folder / "im5.png").write_bytes(original)


@pytest.mark.slow
def test_stats_only_results_do_not_depend_on_the_images_kept(tmp_path):
    cfg, plan = _planned(str(tmp_path))
    options = DecomposeOptions(device="cpu", seed=3)
    runs = [decompose_from_forward(str(tmp_path), plan.run_id, cfg, plan.layers,
                                   list(plan.records), options, keep_images_bytes=bound)
            for bound in (0, 7 * 3 * 32 * 32 * 4, KEEP_IMAGES_BYTES)]
    for parts, statuses in runs[1:]:
        assert statuses == runs[0][1]
        for a, b in zip(runs[0][0], parts, strict=True):
            xr.testing.assert_identical(a, b)


def test_bytes_to_write_are_the_stored_activations_and_none_without_them(tmp_path):
    """What a run needs on the store's disk (``bytes_to_write``, the planner's figure and its
    refusal's): a stored run's whole activation arrays, a stats-only run nothing, since it
    keeps no activations. The stats-only planner asked for the stored run's bytes, and a
    40 MiB disk refused an audit that writes none of them."""
    stored_root = str(tmp_path / "stored")
    cfg = ExtractConfig(**{**CONFIG, "images_per_chunk": 4, "batch_size": 3})
    plan = prepare_run(stored_root, cfg)
    acts = open_activations(Store(stored_root), plan.run_id)
    arrays = sum(acts[site].size * acts[site].dtype.itemsize for site in acts.data_vars)
    model_info = models.describe("test_vit", 32)
    # the arrays' bytes, in whole blocks with their chunks' folders (bfd.tasks.extract)
    assert bytes_to_write(cfg, model_info, 2, 12) >= arrays > 0
    # a new run's figure: its activations and what it writes once besides
    assert plan.bytes_to_write == bytes_to_write(cfg, model_info, 2, 12, whole_run=True) > arrays
    _, stats = _planned(str(tmp_path / "stats"))
    assert stats.bytes_to_write == 0
    assert bytes_to_write(ExtractConfig(**{**CONFIG, "extra": dict(NOT_STORED)}), model_info,
                          2, 12) == 0


AUDIT = ["audit", "--model", "test_vit", "--weights", "random", "--n-images", "12",
         "--img-size", "32", "--layers", "0,2", "--dtype", "float32", "--images-per-chunk", "4",
         "--batch-size", "4", "--device", "cpu", "--no-dashboard", "--no-store-activations"]


@pytest.fixture(scope="module")
def stats_audit(prefect_harness, tmp_path_factory):
    """One ``bfd audit --no-store-activations`` in this process: its store, its run, its
    stderr, and each progress report with the line Ctrl-C would have written then."""
    from bfd import cli_interrupt
    from bfd.cli import main
    from bfd.flows import progress

    root = tmp_path_factory.mktemp("stats-audit") / "store"
    seen = []

    def listen(stage: str, done: int, total: int, detail: dict) -> None:
        seen.append((stage, done, total, cli_interrupt.message()))

    err = io.StringIO()
    with env_kept(), progress.listening(listen), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        code = main([*AUDIT, "--store", str(root)])
    assert code == 0, err.getvalue()
    (rid,) = list_runs(Store(root))
    return root, rid, err.getvalue(), seen


def test_a_stats_only_audit_says_its_plan_and_reports_each_pass_batch_by_batch(stats_audit):
    """The plan in one line (images, no activations kept, two forwards), then each forward's
    images batch by batch and the (site, layer)s summarized, each stage by its own name; and
    Ctrl-C meanwhile would say that nothing is kept. It showed one bar, ``extract``, at 0
    until both forwards and the summaries were done, then at 12, and Ctrl-C said that
    completed shards are kept and a rerun resumes: it keeps none and computes all again."""
    root, rid, err, seen = stats_audit
    work = [(stage, done, total) for stage, done, total, _ in seen
            if stage not in ("notice", "audit")]
    per_batch = [0, 4, 8, 12]  # batches of 4 images
    assert work == ([("forward 1/2", n, 12) for n in per_batch]
                    + [("forward 2/2", n, 12) for n in per_batch]
                    + [("decompose", n, 4) for n in range(0, 5)])  # 2 sites x 2 layers
    assert {line for stage, *_, line in seen if stage != "audit"} == {
        "bfd: interrupted; no audit was recorded; a stats-only run keeps nothing of its work: "
        "a rerun computes it again from the start"}
    plan = (f"bfd: run {rid}: 12 images, no activations kept (--no-store-activations): two "
            "forward passes over them (forward 1/2: their means, forward 2/2: their "
            "projections), then the summaries of 4 (site, layer) pairs (decompose); an "
            "interrupted run keeps nothing and is computed again from the start\n")
    assert err.startswith(plan), err
    assert "\r" not in err  # a pipe: lines, not a terminal's redrawn bars
    bars = err
    assert "forward 1/2: 100%" in bars and "forward 2/2: 100%" in bars
    assert "decompose: 100%" in bars and "extract" not in bars
    # the audit made its store (none was there): said once, after its work
    assert err.count(f"bfd: no store was at {str(root)!r}: a new one was made there\n") == 1


def test_ctrl_c_of_an_audit_waiting_for_another_process_says_that_one_goes_on(
        stats_audit, tmp_path):
    """While a stats-only audit waits for another process computing its run, Ctrl-C's line
    says so: that process goes on and a rerun reuses the run, where it said that the run
    keeps nothing and a rerun computes it from the start. Once the wait ends, the audit
    computes the run itself and the line is the stats-only one again."""
    import threading

    from bfd import cli_interrupt
    from bfd.cli import main
    from bfd.flows import progress
    from bfd.storage import run_lock

    _, rid, _, _ = stats_audit  # the same request in another store: the same run id
    root = tmp_path / "store"
    held, release = threading.Event(), threading.Event()

    def other_process() -> None:  # a thread: the lock is the same for a thread of this one
        with run_lock(Store(root), rid):
            held.set()
            release.wait(120)

    seen = []

    def listen(stage: str, done: int, total: int, detail: dict) -> None:
        seen.append((stage, done, cli_interrupt.message()))
        if stage == "waiting" and not done:
            release.set()

    holder = threading.Thread(target=other_process)
    holder.start()
    assert held.wait(60)
    err = io.StringIO()
    try:
        with env_kept(), progress.listening(listen), contextlib.redirect_stderr(err), \
                contextlib.redirect_stdout(io.StringIO()):
            code = main([*AUDIT, "--store", str(root)])
    finally:
        release.set()
        holder.join()
    assert code == 0, err.getvalue()
    assert f"bfd: waiting for another process computing run {rid}" in err.getvalue()
    # this listener is called before the command's own (registered first): each report
    # shows the line in force until it, so the wait's end shows the line during the wait
    waits = [(done, line) for stage, done, line in seen if stage == "waiting"]
    assert waits == [(0, cli_interrupt.NOT_RECORDED_NOTHING_KEPT),
                     (1, cli_interrupt.waiting_for(rid))]
    assert cli_interrupt.waiting_for(rid) == (
        f"bfd: interrupted; no audit was recorded while it waited for another process computing "
        f"run {rid}; that process goes on, and a rerun reuses the run once it is published")
    after = [line for stage, _, line in seen[seen.index(("waiting", 1, waits[1][1])) + 1:]
             if stage != "audit"]
    assert after and set(after) == {cli_interrupt.NOT_RECORDED_NOTHING_KEPT}


def test_runs_says_a_stats_only_run_kept_no_activations(stats_audit, capsys):
    """`bfd runs` tells a published stats-only run from a stored one (its `activations`
    column, from its config_json), without torch, timm or Prefect; it could not."""
    root, rid, _, _ = stats_audit
    code, out, err = run_cli(["runs", "--format", "json", "--store", str(root)], capsys)
    assert code == 0, err
    assert [(r["run_id"], r["activations"]) for r in json.loads(out)] == [(rid, "not stored")]


def test_the_dashboard_run_page_says_a_stats_only_run_kept_no_activations(stats_audit,
                                                                         tmp_path):
    """The run page's data say `activations`: `not stored`, as `bfd runs` does."""
    import re

    from bfd.report.dashboard import build_dashboard

    root, rid, _, _ = stats_audit
    build_dashboard(root, tmp_path / "site")
    text = (tmp_path / "site" / "runs" / f"{rid}.html").read_text(encoding="utf-8")
    data = re.search(r"<script type='application/json' id='bfd-data'>(.*?)</script>", text, re.S)
    assert json.loads(data.group(1))["run"]["activations"] == "not stored"


def test_decompose_of_a_stats_only_run_is_refused_before_prefect_with_what_works(
        stats_audit, tmp_path, capsys):
    """`bfd decompose` of a stats-only run with other options is refused in one line before
    Prefect is imported (it was, inside the flow, after its server's start-up), naming what
    works: the `bfd audit --no-store-activations` of its request with the options given
    (it named `bfd extract` then `bfd decompose` of another run: "bfd audit takes no
    decompose option"). That audit computes the same run with those options; verify's repair
    of it, damaged, is that audit command again with the options it was published with (it
    said that bfd audit does not take them), which bfd's own parser reads back as them and
    which publishes the same run with the same options. A run published with the default
    options gets its audit command alone."""
    from bfd.cli import build_parser
    from bfd.storage import read_pointer, read_run_table, verify_run

    root = tmp_path / "store"
    shutil.copytree(stats_audit[0], root)
    rid = stats_audit[1]

    def damage_and_verify() -> str:
        table = root / read_pointer(Store(root), rid)["tables"]["heads"]
        table.write_bytes(b"PAR1 not really parquet")
        assert verify_run(Store(root), rid)
        code, _, err = run_cli(["verify", rid, "--store", str(root)], capsys)
        assert code == 1 and err.count("\n") == 1, err
        command = err.split("published again by: ")[1].rstrip("\n")
        assert command.startswith("bfd audit --no-store-activations --model test_vit ")
        return command

    # published with the defaults: nothing after --store to do by hand
    assert damage_and_verify().endswith(f"--store {root}")

    flags = ["--control-seed", "3", "--prefix", "include"]
    code = ("import contextlib, io, sys\n"
            "from bfd.cli import main\n"
            "err = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n"
            f"    code = main(['decompose', {rid!r}, *{flags!r}, '--store', {str(root)!r}])\n"
            "print(code, sorted(m for m in ('torch', 'timm', 'prefect') if m in sys.modules))\n"
            "print(err.getvalue(), end='')\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=120,
                          env={**env, "PREFECT_HOME": str(tmp_path / "prefect-home")})
    status, err = proc.stdout.split("\n", 1)
    assert status == "2 []", proc.stdout + proc.stderr
    assert err.count("\n") == 1 and "takes no decompose option" not in err, err
    assert err.startswith(f"bfd: error: run {rid} kept no activations (an audit with "
                          "--no-store-activations): bfd decompose has nothing of it to read. "
                          "To decompose it with --prefix include --control-seed 3, audit its "
                          "request again: bfd audit --no-store-activations --model test_vit "), err
    audit_it, after = err.split("audit its request again: ")[1].split(" (it computes")
    assert audit_it.endswith(f" --prefix include --control-seed 3 --store {root}"), audit_it
    assert after == (" the run again from two forward passes over its images, as a new audit, "
                     "and publishes it with those options)\n")
    # what it says works: the same run, published with those options
    code, out, err = run_cli(shlex.split(audit_it)[1:], capsys)
    assert code == 0, err
    assert list_runs(Store(root)) == [rid] and f"run {rid}" in out
    results = open_results(Store(root), rid)
    assert (results.attrs["seed"], results.attrs["prefix"]) == (3, "include")
    (published,) = read_run_table(Store(root), "runs", rid).to_pylist()

    # damaged, it is computed again by the audit with the options it was published with
    command = damage_and_verify()
    assert command.endswith(f" --prefix include --control-seed 3 --store {root}"), command
    argv = shlex.split(command)[1:]
    args = build_parser().parse_args(argv)
    assert (args.prefix, args.control_seed, args.store_activations) == ("include", 3, False)
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert list_runs(Store(root)) == [rid] and verify_run(Store(root), rid) == []
    (again,) = read_run_table(Store(root), "runs", rid).to_pylist()
    assert again["config_json"] == published["config_json"]
    assert json.loads(again["config_json"])["decompose"]["prefix"] == "include"


def test_an_identical_stats_only_audit_reuses_its_run_with_or_without_the_flow(
        stats_audit, tmp_path, capsys):
    """A stats-only audit of a request already published with the same options reuses its
    results, as an audit of a stored run does: through the flow (a Prefect API configured) it
    says so and runs neither forward; without a Prefect API it is recorded without Prefect,
    torch or timm. Both recomputed the whole run: two forwards and the summaries each time."""
    from bfd.flows import progress
    from bfd.storage import read_table, results_path

    root = tmp_path / "store"
    shutil.copytree(stats_audit[0], root)
    rid = stats_audit[1]
    runs = read_table(Store(root), "runs").to_pylist()
    results = Path(results_path(Store(root), rid))
    written = {p: p.stat().st_mtime_ns for p in results.rglob("*")}
    argv = [*AUDIT, "--series", "again", "--store", str(root)]

    stages = []
    with progress.listening(lambda stage, *_: stages.append(stage)):
        code, _, err = run_cli([*argv, "--step", "1"], capsys)  # the harness's Prefect API
    assert code == 0, err
    assert (f"bfd: run {rid} is already computed (no activations kept): its results are "
            "reused, nothing is recomputed\n") in err
    assert not {"forward 1/2", "forward 2/2", "decompose"} & set(stages), stages

    ran, _, err = bfd_without_prefect_api([*argv, "--step", "2"], tmp_path)
    assert {k: ran[k] for k in ("code", "loaded")} == {"code": 0, "loaded": []}, err
    assert f"bfd: run {rid} is already computed: the audit is recorded without a Prefect" in err

    assert read_table(Store(root), "runs").to_pylist() == runs  # nothing published again
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*")} == written
    audits = run_sql(str(root), "SELECT step, run_id, status, flow_run_id IS NULL AS fast "
                                "FROM audits WHERE series = 'again' ORDER BY step").to_pylist()
    assert audits == [{"step": 1, "run_id": rid, "status": "complete", "fast": False},
                      {"step": 2, "run_id": rid, "status": "complete", "fast": True}]
