"""Audits end to end: two real audits of two random-init models (one audited twice), every
named query on them, drift on planted checkpoints through the command line, and
`bfd audit --demo` as a user runs it."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from checkpoints import AUDIT, make_checkpoints
from conftest import bfd_without_prefect_api, env_kept, interrupted_at

from bfd.cli import main
from bfd.flows.audit import audit
from bfd.queries import list_queries, run_query, run_sql
from bfd.queries.seen import run_seen
from bfd.storage import (
    SEEN_FIGURES,
    Store,
    open_results,
    read_audits,
    read_drift,
    read_left_out,
    read_table,
)
from bfd.tasks.drift_gate import DriftGateFailed

MODELS = {"test_vit": 6, "test_vit2": 8}  # name -> depth
CONFIG = {"weights": "random", "images": "samples", "n_images": 12, "img_size": 64,
          "dtype": "float32", "images_per_chunk": 4}


@pytest.fixture(scope="module")
def audited(tmp_path_factory, prefect_harness):
    """Both models audited once, then test_vit again with the identical request; the runs
    table as it was before the repeat."""
    root = str(tmp_path_factory.mktemp("audits"))
    first = {model: audit({"model": model, **CONFIG}, root, dashboard=False) for model in MODELS}
    runs_before = read_table(Store(root), "runs").to_pylist()
    again = audit({"model": "test_vit", **CONFIG}, root, dashboard=False)
    return root, first, again, runs_before


@pytest.fixture(scope="module")
def store(audited):
    return audited[0]


def test_a_dry_run_finds_a_computed_run_whose_request_was_spelled_otherwise(
        tmp_path, prefect_harness, capsys):
    """A folder of 4 images audited without --n-images, then the dry run of --n-images 4: the
    same run, which the request keys (another spelling) do not find. The audit's flow reuses
    it; the dry run said "to decompose and publish" (trial 24 F10); now it says reused."""
    from PIL import Image

    from bfd.images import sample_array

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(sample_array("coffee", i + 1)).save(folder / f"{i}.png")
    (folder / "5.avif").write_bytes(b"not listed")  # said before any work, not listed
    argv = ["audit", "--model", "test_vit", "--weights", "random", "--images", str(folder),
            "--img-size", "32", "--layers", "0", "--dtype", "float32", "--images-per-chunk",
            "4", "--store", str(tmp_path / "store"), "--no-dashboard", "--series", "s"]
    assert main(argv) == 0
    (first,) = read_audits(Store(tmp_path / "store"), "s")
    capsys.readouterr()
    assert main([*argv, "--n-images", "4", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert f"bfd: note: {folder} holds 1 file(s) of image formats it does not list (5.avif;" \
        in err, err
    said = out.splitlines()
    assert said[2] == (f"run {first['run_id']}: computed already with these options: reused, "
                       "nothing computed"), said
    assert main([*argv, "--n-images", "4", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == first["run_id"]


def test_a_dry_run_says_what_an_audit_would_do_and_does_nothing(audited, tmp_path, capsys):
    """``bfd audit --dry-run``: the run reused (and the audit its drift compares with), or
    the run to compute and its size; a bad request refused as the audit refuses it; nothing
    recorded or written."""
    root, _, again, _ = audited
    argv = ["audit", "--model", "test_vit", "--weights", "random", "--images", "samples",
            "--n-images", "12", "--img-size", "64", "--dtype", "float32",
            "--images-per-chunk", "4", "--dry-run", "--step", "7"]
    before = read_audits(Store(root))
    capsys.readouterr()
    assert main([*argv, "--store", root]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "dry run: nothing is computed or recorded",
        f"audit: series test_vit@random-seed-0, step 7; store {root}",
        f"run {again['run_id']}: computed already with these options: reused, nothing "
        "computed",
        # the latest audit at or before step 7: none (the fixture's steps are their times)
        "drift: first audit of this series, nothing to compare with"]
    assert read_audits(Store(root)) == before
    # in a process of its own, as a read-only command: neither torch, timm nor Prefect
    ran, out, _ = bfd_without_prefect_api([*argv, "--store", root], tmp_path)
    assert (ran["code"], ran["loaded"]) == (0, []) and out.startswith("dry run: "), out
    # another N on a new store: the run to compute (6 blocks, 64 / 16 = 4 x 4 patches and
    # the class token, width 64), the store not even created
    new = tmp_path / "new"
    assert main([*argv[:-2], "--n-images", "8", "--store", str(new)]) == 0
    out, err = capsys.readouterr()
    assert ": to compute (8 images x 6 layers x 2 sites, 17 tokens of width 64): 2 shards (8 " \
        "images) to extract, at most " in out and \
        "audit: series test_vit@random-seed-0, step its start time (" in out, out
    assert not new.exists()
    # more workers than cores: said as the audit says it (trial 33: the dry run did not)
    cores = os.cpu_count() or 1
    assert main([*argv[:-2], "--n-images", "8", "--workers", str(cores + 1), "--store",
                 str(new)]) == 0
    assert (f"note: --workers {cores + 1} is more than the {cores} cores here; using "
            f"{cores}") in capsys.readouterr().out
    # said once: a mistyped --store of a scheduled job started a new history unseen
    assert err.splitlines()[-1] == (f"bfd: no store was at {str(new)!r}: a new one would be "
                                    "made there")
    assert err.count("no store was at") == 1
    # the same on the audited store: its drift is not compared, as the audit would not compare
    # it (the dry run said it would compare with the series' latest audit)
    assert main([*argv[:-2], "--n-images", "8", "--store", root]) == 0
    out = capsys.readouterr().out
    assert "drift: nothing compared (previous audit used other images (images " in out \
        and ", N 12 -> 8); not compared: " in out, out
    # other weights of the model in its series, as many images: compared with its latest audit
    assert main([*argv[:-2], "--seed", "1", "--series", "test_vit@random-seed-0",
                 "--store", root]) == 0
    latest = read_audits(Store(root), "test_vit@random-seed-0")[-1]
    assert (f"drift: compared with audit {latest['audit_id']} (step {latest['step']}), if all "
            "12 listed images decode") in capsys.readouterr().out
    # the stored run, decomposed with other options: nothing to extract; one shard's marker
    # gone (an interrupted extraction): that shard alone to extract
    assert main([*argv[:-2], "--prefix", "include", "--store", root]) == 0
    out = capsys.readouterr().out
    assert (f"run {again['run_id']}: extracted already (12 images x 6 layers x 2 sites, 17 "
            "tokens of width 64, all 3 shards stored intact): to decompose and publish, "
            "nothing to extract") in out, out
    assert "nothing compared (previous audit's shares were decomposed with --prefix exclude" \
        in out, out
    # ... and says its published results are replaced, as the audit would
    assert f"\nnote: run {again['run_id']} is published decomposed with --prefix exclude; " \
        "this audit decomposes it again with --prefix include, replacing those results" in out
    part = tmp_path / "part"
    shutil.copytree(root, part)
    (Store(part).shards_dir(again["run_id"]) / "1.json").unlink()
    assert main([*argv, "--store", str(part)]) == 0
    assert (f"run {again['run_id']}: stored in part: 2 of 3 shards kept, 1 shard (4 images) "
            "to extract, at most ") in capsys.readouterr().out
    assert main([*argv, "--layers", "99", "--store", root]) == 2
    out, err = capsys.readouterr()
    assert "dry run" not in out and "--layers: must be in [0, 6)" in err


def test_a_damaged_run_is_said_once_by_an_audit(audited, tmp_path):
    """Another run's table file changed after it was published: an audit (reused, without
    Prefect) says so in one line; it said it at each open of the catalog (six times in the
    trial's audit), burying its other warnings."""
    import pyarrow.parquet as pq

    from bfd.storage import read_pointer

    root = tmp_path / "store"
    shutil.copytree(audited[0], root)
    heads = root / read_pointer(Store(root), audited[1]["test_vit2"]["run_id"])["tables"]["heads"]
    table = pq.read_table(heads)
    pq.write_table(table.slice(1), heads)  # a row fewer: changed since it was published
    argv = ["audit", "--model", "test_vit", "--weights", "random", "--images", "samples",
            "--n-images", "12", "--img-size", "64", "--dtype", "float32",
            "--images-per-chunk", "4", "--no-dashboard", "--store", str(root)]
    ran, _, err = bfd_without_prefect_api(argv, tmp_path)
    said = [line for line in err.splitlines() if f"table file {heads}" in line]
    assert ran["code"] == 0 and len(said) == 1, err


def test_identical_request_reuses_its_run_and_records_a_new_audit(audited, capsys):
    root, first, again, runs_before = audited
    assert again["run_id"] == first["test_vit"]["run_id"] and again["reused"]
    assert not first["test_vit"]["reused"] and "runs" not in again
    runs = read_table(Store(root), "runs").to_pylist()
    assert sorted(r["run_id"] for r in runs) == sorted(r["run_id"] for r in runs_before)
    assert {r["run_id"]: r["created_at"] for r in runs} == {
        r["run_id"]: r["created_at"] for r in runs_before}
    series = "test_vit@random-seed-0"
    audits = read_audits(Store(root), series)
    assert [a["audit_id"] for a in audits] == [first["test_vit"]["audit_id"], again["audit_id"]]
    assert [a["prev_audit_id"] for a in audits] == [None, first["test_vit"]["audit_id"]]
    assert all(a["status"] == "complete" and a["run_id"] == again["run_id"] for a in audits)
    drift = read_drift(Store(root), series, again["audit_id"])
    # the same run compared with itself: every value there (per layer frac_pos, frac_img and
    # frac_int at 2 sites; per head 4 shares and its type), nothing moved, nothing flagged
    assert len(drift) == 6 * 6 + 6 * 2 * 5 and again["n_flagged"] == 0
    assert all(r["delta"] == 0.0 for r in drift)
    # what both audits kept of it, and so audit_history's deltas, to the bit: what an audit
    # sees of a run is the same on every call (it came 1 ulp apart now and then: 9e-19)
    kept = [{name: a[name] for name, _ in SEEN_FIGURES} for a in audits]
    assert kept[0] == kept[1]
    seen = {tuple(run_seen(root, again["run_id"])[name] for name, _ in SEEN_FIGURES)
            for _ in range(10)}
    assert seen == {tuple(kept[0].values())}
    # the chance-corrected shares and the model check among them (trial 23: the Series page
    # could plot only the raw shares, which move with N), the run's run_summary figures
    (summary,) = run_sql(root, "SELECT * FROM run_summary WHERE run_id = "
                         f"'{again['run_id']}'").to_pylist()
    for name in ("frac_pos_adj_mean", "f_pp_adj", "f_pc_adj", "f_cp_adj", "f_cc_adj",
                 "model_logit_residual_max", "model_attn_residual_max"):
        assert kept[0][name] is not None and kept[0][name] == pytest.approx(
            summary[name], rel=1e-12, abs=1e-15), name
    _, history = run_query(root, "audit_history", {"series": series}).to_pylist()
    assert all(history[k] == 0 for k in history if k.startswith("delta_")), history
    # a new decomposition of the run keeps the time it was first computed
    with env_kept():
        assert main(["decompose", again["run_id"], "--store", root]) == 0
    runs = {r["run_id"]: r["created_at"] for r in read_table(Store(root), "runs").to_pylist()}
    assert runs[again["run_id"]] == next(
        r["created_at"] for r in runs_before if r["run_id"] == again["run_id"])


def test_every_named_query_runs_on_real_audits(audited):
    root, first, again, _ = audited
    params = {"layer_profile": {"model": "test_vit"}, "audit_history": {"model": "test_vit"},
              "compare_models": {"model_a": "test_vit", "model_b": "test_vit2"},
              "head_map": {"model": "test_vit2"}, "drift": {"series": again["series"]},
              "head_type_changes": {"run_a": again["run_id"], "run_b": again["run_id"]},
              "compare_runs": {"run_a": again["run_id"], "run_b": again["run_id"]},
              "head_energy_changes": {"run_a": again["run_id"], "run_b": again["run_id"]},
              "drift_since": {"series": again["series"]}}
    for name in set(list_queries()) - {"head_type_changes"}:
        table = run_query(root, name, params.get(name, {}))
        assert table.num_rows > 0, name
    history = run_query(root, "audit_history", {"series": again["series"]}).to_pylist()
    assert [h["audit_id"] for h in history] == [first["test_vit"]["audit_id"], again["audit_id"]]


def test_model_summary_is_energy_weighted(store):
    summary = run_query(store, "model_summary").to_pandas().set_index("model")
    assert set(summary.index) == set(MODELS)
    for model in MODELS:
        heads = run_sql(store, f"SELECT * FROM heads WHERE model = '{model}'").to_pandas()
        total = heads[["e_pp", "e_pc", "e_cp", "e_cc"]].to_numpy().sum()
        np.testing.assert_allclose(summary.loc[model, "f_cc"], heads.e_cc.sum() / total,
                                   rtol=1e-9)
        # the chance-corrected twins, which compare across N (raw shares fall with N), and
        # the layers the shares are over: one model's run of --layers 0,5,11 is not another's
        adj = heads[[f"e_{b}_adj" for b in ("pp", "pc", "cp", "cc")]].to_numpy()
        for i, block in enumerate(("pp", "pc", "cp", "cc")):
            np.testing.assert_allclose(summary.loc[model, f"f_{block}_adj"],
                                       adj[:, i].sum() / adj.sum(), rtol=1e-9)
        layers = run_sql(store, f"SELECT frac_pos_adj FROM layers WHERE model = '{model}' "
                                "AND site = 'attn_in'").to_pandas()
        np.testing.assert_allclose(summary.loc[model, "frac_pos_adj_mean"],
                                   layers.frac_pos_adj.mean(), rtol=1e-9)
        assert summary.loc[model, "layers"] == ",".join(map(str, range(MODELS[model])))


def test_layer_profile_and_head_types_follow_the_model(store):
    for model, depth in MODELS.items():
        profile = run_query(store, "layer_profile", {"model": model}).to_pandas()
        assert list(profile.layer) == list(range(depth))
        np.testing.assert_allclose(profile.rel_depth, np.arange(depth) / (depth - 1))
        assert profile.frac_pos.between(0, 1).all()
        counts = run_query(store, "head_types").to_pandas()
        mine = counts[counts.model == model]
        assert mine.groupby("layer")["n_heads"].sum().eq(2).all()  # 2 heads per block


def test_compare_models_aligns_relative_depth(store):
    cmp = run_query(store, "compare_models", {"model_a": "test_vit", "model_b": "test_vit2"})
    cmp = cmp.to_pandas()
    assert cmp.depth_lo.is_monotonic_increasing
    assert {"frac_pos_a", "frac_pos_b"} <= set(cmp.columns)


def test_catalog_refuses_update(store, capsys):
    assert main(["sql", "--store", store, "UPDATE heads SET e_pp = 0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bfd: error:") and "read-only" in err and "\n" not in err


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch, capsys, prefect_harness):
    """`bfd audit --demo`: offline, default store from $BFD_STORE, summary table at the end;
    how it runs (here the batch size) is the user's to choose."""
    monkeypatch.setenv("BFD_STORE", str(tmp_path / "store"))
    assert main(["audit", "--demo", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "vit_tiny_patch16_224" in out and "frac_pos" in out and "n_heads_cc" in out
    # it ends with the corrected shares, their intervals, how to read them, what to try next
    assert "frac_pos_adj_lo" in out and "How to read this" in out and "bfd audit --model" in out
    assert str(tmp_path / "store") in out
    index = tmp_path / "store" / "dashboard" / "index.html"
    assert index.is_file()  # refreshed last, and named
    assert f"\ndashboard: {index}  (open it in a browser, or serve it: bfd dashboard " in out
    # how to read it holds for this run: its heads' f_cp_adj lie above zero too, and are small
    text = " ".join(out.split())
    assert re.search(r"the f_cp_adj interval of \d+ of its 36 heads lies above zero", text), text
    assert re.search(r"f_cp_adj at most 0\.0[0-4]\d ", text), text
    runs = run_sql(str(tmp_path / "store"), "SELECT * FROM runs").to_pandas()
    assert list(runs.weights) == ["random"] and runs.n_images.iloc[0] == 64
    assert main(["query", "model_summary"]) == 0  # the same default store, no --store
    assert "vit_tiny_patch16_224" in capsys.readouterr().out


def test_drift_flags_the_planted_change_and_fails_the_gate(tmp_path, prefect_harness, capsys):
    """Three checkpoints in one series through the command line: the planted positional
    change flags (exit 3 under --fail-on-drift), a change no activation sees does not, and
    audit-checkpoints then finds each file already audited with the same request."""
    paths = make_checkpoints(tmp_path / "ckpts")
    store = str(tmp_path / "store")
    common = ["--model", AUDIT["model"], "--n-images", "6", "--img-size", "64", "--layers", "0",
              "--dtype", "float32", "--images-per-chunk", "6", "--series", "s", "--store", store,
              "--no-dashboard"]

    def bfd(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with env_kept():
            code = main(list(argv))
        return code, *capsys.readouterr()

    assert bfd("audit", *common, "--weights", str(paths[0]), "--step", "100",
               "--fail-on-drift")[0] == 0
    code, out, err = bfd("audit", *common, "--weights", str(paths[1]), "--step", "200",
                         "--fail-on-drift")
    assert code == 3 and "flagged (--fail-on-drift)" in err and "frac_pos" in out
    # its tables' shares in the order of every table and query: pp, pc, cp, cc
    headers = [line.split() for line in out.splitlines() if "f_pp" in line or "f_pp_adj" in line]
    assert [[w for w in words if w.startswith("f_")] for words in headers] == [
        ["f_pp", "f_pc", "f_cp", "f_cc"], ["f_pp_adj", "f_pc_adj", "f_cp_adj", "f_cc_adj"]]
    (planted,) = [a for a in read_audits(Store(store), "s") if a["n_flagged"]]
    flagged = [r for r in read_drift(Store(store), "s", planted["audit_id"]) if r["flagged"]]
    assert flagged and all(r["layer"] == 0 for r in flagged)
    pos = next(r for r in flagged if r["metric"] == "frac_pos")
    assert pos["after"] > pos["before"] + 0.05 and pos["delta"] == pos["after"] - pos["before"]
    # --format json lists the flagged values too (a wrapper had n_flagged alone): the planted
    # checkpoint audited again at step 150 compares the same two runs (step 100's and its own)
    code, out, err = bfd("audit", *common, "--weights", str(paths[1]), "--step", "150",
                         "--format", "json")
    record = json.loads(out)
    assert code == 0 and record["n_flagged"] == planted["n_flagged"] == len(record["flagged"])
    keys = ("layer", "head", "metric", "before", "after", "delta", "threshold")
    assert {tuple(r[k] for k in keys) for r in record["flagged"]} == {
        tuple(r[k] for k in keys) for r in flagged}
    assert all((r["type_before"] is None) == (r["metric"] != "head_type")
               for r in record["flagged"])
    # thresholds from the command line: nothing is large enough to flag
    code, out, err = bfd("audit", *common, "--weights", str(paths[0]), "--step", "250",
                         "--fail-on-drift", "--drift-threshold", "1",
                         "--drift-threshold", "head_type=1")
    assert code == 0 and "0 value(s) flagged" in out
    # the folder: step_100 and step_200 are audited already (same bytes), step_300 is not;
    # --dry-run says so, and records nothing
    before = read_audits(Store(store), "s")
    code, out, err = bfd("audit-checkpoints", str(tmp_path / "ckpts"), *common, "--dry-run")
    said, step_300 = out.splitlines()[1:]
    assert code == 0 and step_300 == "  to audit: step 300  step_300.pt", out
    assert said.startswith(f"series s; store {store}; 3 checkpoint file(s): 1 to audit, 2 "
                           "already audited with the same request (model test_vit, ") and \
        said.endswith(" and each file's sha256), 0 left out"), said
    assert read_audits(Store(store), "s") == before
    code, out, err = bfd("audit-checkpoints", str(tmp_path / "ckpts"), *common)
    assert code == 0 and "1 checkpoint(s) audited" in out and "step_300.pt" in out
    # which checkpoint is audited is said when its audit starts, before its extraction's lines
    assert err.startswith("bfd: checkpoint 1 of 1 to audit: step_300.pt (step 300)\n"), err
    assert "dashboard:" not in out  # --no-dashboard
    code, out, _ = bfd("audit-checkpoints", str(tmp_path / "ckpts"), *common)
    assert code == 0 and out.startswith("nothing to do") and "3 files" in out
    steps = [(a["step"], a["trigger"]) for a in read_audits(Store(store), "s")]
    assert steps == [(100, "cli"), (150, "cli"), (200, "cli"), (250, "cli"),
                     (300, "checkpoints")]
    # a new series under --fail-if-not-compared: its first checkpoint compares with nothing,
    # and fails the gate, in one line, after every checkpoint is audited (the runs reused)
    # (with its dashboard, which it names once rebuilt)
    code, out, err = bfd("audit-checkpoints", str(tmp_path / "ckpts"), *common[:-1],
                         "--series", "t", "--fail-if-not-compared")
    first, *rest = read_audits(Store(store), "t")
    assert code == 3 and "3 checkpoint(s) audited" in out, out + err
    assert [line for line in err.splitlines() if " to audit: " in line] == [
        f"bfd: checkpoint {k} of 3 to audit: {p.name} (step {s})"
        for k, (p, s) in enumerate(zip(paths, (100, 200, 300), strict=True), 1)]
    index = tmp_path / "store" / "dashboard" / "index.html"
    assert index.is_file() and out.splitlines()[-1] == (
        f"dashboard: {index}  (open it in a browser, or serve it: bfd dashboard --serve "
        f"--store {store})")
    assert [line for line in err.splitlines() if "not compared" in line] == [
        f"bfd: drift not compared (--fail-if-not-compared): audit {first['audit_id']} is the "
        "first of series t, with nothing to compare with (it is kept: the next audit compares "
        "with it)"]
    assert first["step"] == 100 and [a["prev_audit_id"] for a in rest] == [
        first["audit_id"], rest[0]["audit_id"]]
    # step 300's file saved again unchanged at step 400 and as last.pt: the model audited
    # already (README), no audit of its own
    shutil.copy(paths[2], tmp_path / "ckpts" / "step_400.pt")
    shutil.copy(paths[2], tmp_path / "ckpts" / "last.pt")
    code, out, err = bfd("audit-checkpoints", str(tmp_path / "ckpts"), *common[:-1],
                         "--series", "t")
    assert code == 0 and out.startswith("nothing to do") and "(5 of 5 files)" in out, out
    assert [a["step"] for a in read_audits(Store(store), "t")] == [100, 200, 300]


def test_drift_compares_only_what_both_audits_saw(tmp_path, prefect_harness, capsys):
    """One unchanged random-init model: another image count is not drift (its raw shares
    move by more than the threshold, yet nothing is compared or flagged, and the gate
    passes), and another set of layers is compared on the common layer only."""
    store = str(tmp_path / "store")
    common = ["--model", "test_vit", "--weights", "random", "--img-size", "32", "--dtype",
              "float32", "--series", "s", "--store", store, "--no-dashboard", "--fail-on-drift"]

    def bfd(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with env_kept():
            code = main(["audit", *common, *argv])
        return code, *capsys.readouterr()

    # the first audit of a series passes the gate, and says that it checked nothing (a
    # mistyped --series passed in silence)
    code, _, err = bfd("--n-images", "8", "--layers", "0", "--step", "1")
    (first,) = read_audits(Store(store), "s")
    assert code == 0 and err.splitlines()[-1] == (
        "bfd: warning: drift not compared (--fail-on-drift passes without a check): audit "
        f"{first['audit_id']} is the first of series s, with nothing to compare with (it is "
        "kept: the next audit compares with it)"), err
    code, out, err = bfd("--n-images", "3", "--layers", "0", "--step", "2")
    assert code == 0 and "flagged" not in err, err
    audits = read_audits(Store(store), "s")
    note = audits[1]["drift_note"]  # kept in the audit's row, as printed
    assert re.fullmatch(r"previous audit used other images \(images [0-9a-f]{12} -> [0-9a-f]{12}, "
                        r"N 8 -> 3\); not compared: .*", note), note
    assert f"drift: {note}" in out, out
    # the gate passes, and says on stderr that it checked nothing
    assert err.splitlines()[-1] == ("bfd: warning: drift not compared (--fail-on-drift passes "
                                    f"without a check): {note}"), err
    assert [a["n_flagged"] for a in audits] == [0, 0]
    assert read_drift(Store(store), "s", audits[1]["audit_id"]) == []
    # the planted truth: raw frac_pos moved by more than the 0.05 threshold with N alone
    pos = run_sql(store, "SELECT frac_pos FROM layers WHERE site = 'attn_in' AND layer = 0 "
                         f"AND run_id IN ('{audits[0]['run_id']}', '{audits[1]['run_id']}')")
    before, after = pos.column("frac_pos").to_pylist()
    assert abs(after - before) > 0.05

    code, out, err = bfd("--n-images", "3", "--layers", "0,1", "--step", "3")
    assert code == 0 and "0 value(s) flagged" in out, out + err
    third = read_audits(Store(store), "s")[2]
    drift = read_drift(Store(store), "s", third["audit_id"])
    assert drift and {r["layer"] for r in drift} == {0} and not any(r["flagged"] for r in drift)
    assert all(abs(r["delta"]) < 1e-6 for r in drift)  # the same layer of the same model
    history = run_query(store, "audit_history", {"series": "s"}).to_pylist()
    assert [h["comparable"] for h in history] == [None, False, False]
    assert [h["n_layers"] for h in history] == [1, 1, 2]
    assert all(h["delta_n_heads_cc"] is None and h["delta_f_cc"] is None for h in history)


def test_fail_if_not_compared_fails_an_audit_that_compared_nothing(tmp_path, prefect_harness,
                                                                  capsys):
    """--fail-if-not-compared: the first audit of a series fails the gate (and is kept), the
    same request again compares and passes, another image count fails naming why; flagged
    drift alone does not fail it (that is --fail-on-drift's)."""
    store = str(tmp_path / "store")
    common = ["--model", "test_vit", "--weights", "random", "--img-size", "32", "--dtype",
              "float32", "--layers", "0", "--series", "s", "--store", store, "--no-dashboard",
              "--fail-if-not-compared"]

    def bfd(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with env_kept():
            code = main(["audit", *common, *argv])
        return code, *capsys.readouterr()

    code, out, err = bfd("--n-images", "8", "--step", "1")
    (first,) = read_audits(Store(store), "s")
    assert code == 3 and "drift: first audit of this series" in out, out + err
    assert err.splitlines()[-1] == (
        f"bfd: drift not compared (--fail-if-not-compared): audit {first['audit_id']} is the "
        "first of series s, with nothing to compare with (it is kept: the next audit compares "
        "with it)"), err
    assert first["status"] == "complete"
    code, out, err = bfd("--n-images", "8", "--step", "2")
    assert code == 0 and "0 value(s) flagged" in out and "not compared" not in err, out + err
    # not compared (another N), under --fail-on-drift too: the failure alone, not its warning
    code, out, err = bfd("--n-images", "3", "--step", "3", "--fail-on-drift")
    note = read_audits(Store(store), "s")[2]["drift_note"]
    assert note and code == 3 and f"drift: {note}" in out, out + err
    assert [line for line in err.splitlines() if "not compared" in line] == [
        f"bfd: drift not compared (--fail-if-not-compared): {note}"], err
    # flagged drift (another random init), compared: passes without --fail-on-drift, fails
    # with it (back to the first init, its run reused)
    code, out, err = bfd("--n-images", "3", "--step", "4", "--seed", "1")
    assert code == 0 and "0 value(s) flagged" not in out and "flagged against" in out, out + err
    assert "not compared" not in err, err
    code, out, err = bfd("--n-images", "3", "--step", "5", "--fail-on-drift")
    assert code == 3 and "flagged (--fail-on-drift)" in err and "not compared" not in err, err


def test_flow_gate_parameters_end_a_run_failed_after_recording(tmp_path, prefect_harness):
    """The flow's own fail_if_not_compared and fail_on_drift (a deployment's parameters, the
    CLI's rule): the run ends Failed, its message one line saying what was not compared or
    flagged, once the audit and its drift are recorded; a run that compared and flagged
    nothing under both ends Completed."""
    store = str(tmp_path / "store")
    config = {"model": "test_vit", "weights": "random", "img_size": 32, "dtype": "float32",
              "layers": "0", "n_images": 8}

    def run(step: int, seed: int, **gate: bool):
        # any move flags (threshold 0): another random init surely moves some fraction
        return audit({**config, "seed": seed}, store, series="s", step=step, dashboard=False,
                     drift={"fraction": 0.0, "head_type": 0.0}, return_state=True, **gate)

    state = run(1, 0, fail_if_not_compared=True, fail_on_drift=True)
    (first,) = read_audits(Store(store), "s")
    assert state.is_failed() and first["status"] == "complete"
    assert state.message == (
        f"drift not compared (fail_if_not_compared): audit {first['audit_id']} is the first "
        "of series s, with nothing to compare with (it is kept: the next audit compares with "
        "it)")
    with pytest.raises(DriftGateFailed) as err:  # a call of the flow: its return value kept
        state.result()
    assert err.value.out["audit_id"] == first["audit_id"]
    state = run(2, 1, fail_on_drift=True)  # another random init: drift flagged
    second = read_audits(Store(store), "s")[1]
    assert second["n_flagged"] > 0 and second["status"] == "complete"
    assert read_drift(Store(store), "s", second["audit_id"])  # recorded before the end
    assert state.is_failed() and state.message == (
        f"drift: {second['n_flagged']} value(s) flagged (fail_on_drift)")
    state = run(3, 1, fail_on_drift=True, fail_if_not_compared=True)  # the same init again
    assert state.is_completed() and state.result()["n_flagged"] == 0


def test_checkpoints_flow_fails_on_the_planted_drift_after_auditing_all(tmp_path,
                                                                       prefect_harness):
    """audit-checkpoints' fail_on_drift: every checkpoint is audited and recorded, then the
    run ends Failed, its message the one planted flag (step 200's frac_pos)."""
    from bfd.flows.checkpoints import audit_checkpoints

    make_checkpoints(tmp_path / "ckpts")
    store = str(tmp_path / "store")
    state = audit_checkpoints(str(tmp_path / "ckpts"), AUDIT, store, series="c",
                              drift={"fraction": 1.0, "metrics": {"frac_pos": 0.05}},
                              dashboard=False, fail_on_drift=True, return_state=True)
    audits = read_audits(Store(store), "c")
    assert [(a["step"], a["status"], a["n_flagged"]) for a in audits] == [
        (100, "complete", 0), (200, "complete", 1), (300, "complete", 0)]
    assert state.is_failed() and state.message == "drift: 1 value(s) flagged (fail_on_drift)"
    with pytest.raises(DriftGateFailed) as err:
        state.result()
    assert [a["audit_id"] for a in err.value.out["audits"]] == [a["audit_id"] for a in audits]


def test_drift_never_compares_two_models_of_one_series(tmp_path, prefect_harness, capsys):
    """One --series given audits of two models on the same images and layer: test_vit2's
    block 0 is not test_vit's block 0 changing. Nothing is compared or flagged, the note says
    why, --fail-on-drift passes with its warning; test_vit again compares with test_vit's
    audit, skipping test_vit2's; another random init of the model (other weights of one
    model) is compared again."""
    store = str(tmp_path / "store")
    common = ["--weights", "random", "--img-size", "32", "--dtype", "float32", "--n-images",
              "3", "--layers", "0", "--series", "s", "--store", store, "--no-dashboard"]

    def bfd(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with env_kept():
            code = main(["audit", *common, *argv])
        return code, *capsys.readouterr()

    assert bfd("--model", "test_vit", "--step", "1")[0] == 0
    code, out, err = bfd("--model", "test_vit2", "--step", "2", "--fail-on-drift")
    audits = read_audits(Store(store), "s")
    note = audits[1]["drift_note"]
    assert note == ("previous audit was of another model (test_vit, not test_vit2); not "
                    "compared: layers and heads of two models are no change of one (`bfd query "
                    "compare_models` compares models)")
    assert code == 0 and f"drift: {note}" in out, out + err
    assert err.splitlines()[-1] == ("bfd: warning: drift not compared (--fail-on-drift passes "
                                    f"without a check): {note}"), err
    assert audits[1]["n_flagged"] == 0 and read_drift(Store(store), "s",
                                                      audits[1]["audit_id"]) == []
    history = run_query(store, "audit_history", {"series": "s"}).to_pylist()
    assert [h["comparable"] for h in history] == [None, False]
    # back to test_vit: compared with its own earlier audit (step 1), test_vit2's skipped and
    # said; the gate passes (its run reused: the same request as step 1's)
    code, out, err = bfd("--model", "test_vit", "--step", "3", "--fail-if-not-compared")
    first, second, third = read_audits(Store(store), "s")
    assert code == 0 and "not compared" not in err, out + err
    assert (third["prev_audit_id"], third["drift_note"]) == (first["audit_id"], None)
    assert (f"drift: 0 value(s) flagged against audit {first['audit_id']} (step 1), the latest "
            f"comparable; skipped 1 audit not comparable ({second['audit_id']} at step 2: "
            "another model (test_vit2, not test_vit))") in out.splitlines(), out
    # other weights of one model (another seed) are compared: that is what a series is for
    code, out, err = bfd("--model", "test_vit", "--step", "4", "--seed", "1",
                         "--fail-if-not-compared")
    fourth = read_audits(Store(store), "s")[3]
    assert code == 0 and fourth["drift_note"] is None and "flagged against" in out, out + err
    assert read_drift(Store(store), "s", fourth["audit_id"])


def test_bad_audit_options_are_named_as_the_user_wrote_them(tmp_path, capsys):
    for argv, needle in ((["--n-images", "1"], "--n-images: must be an integer >= 2 (BFD needs "
                          "at least 2 images), or unset for all (given 1)"),
                         (["--weights", str(tmp_path / "x.pth")], "--weights: checkpoint file"),
                         (["--drift-threshold", "f_pp=big"], "--drift-threshold must be"),
                         (["--drift-threshold", "f_ppp=0.1"], "no drift metric named f_ppp; "
                          "the metrics are frac_pos, "),
                         # 1 - frac_pos: not compared, its drift is frac_pos's
                         (["--drift-threshold", "frac_content_resid=0.1"], "frac_content_resid "
                          "is 1 - frac_pos_resid: its drift is frac_pos_resid's, which drift "
                          "compares (set frac_pos_resid=VALUE)"),
                         (["--drift-threshold", "f_cc=-1"], "a threshold must be a number >= 0,"
                          " not f_cc=-1.0; got f_cc=-1"),
                         # fractions move by at most 1 (head_type's delta is 0 or 1): a
                         # threshold above 1 never flags, and is refused, not obeyed
                         (["--drift-threshold", "2"], "--drift-threshold: 2 can never flag: "
                          "every drift metric is a fraction in [0, 1]"),
                         (["--drift-threshold", "head_type=2"], "head_type=2 can never flag"),
                         (["--drift-threshold", "frac_pos=1.5"], "frac_pos=1.5 can never flag")):
        with env_kept():
            code = main(["audit", "--model", "test_vit", *argv, "--store", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("bfd: error: ") and err.count("\n") == 1, err
        assert needle in err, err


def test_a_missing_or_empty_image_source_is_refused_before_an_audit_is_recorded(
        tmp_path, capsys, prefect_harness):
    """A typo in --images is the user's mistake, not a failed audit of the series."""
    (tmp_path / "empty").mkdir()
    store = tmp_path / "store"
    for images, needle in ((tmp_path / "nope", "does not exist"),
                           (tmp_path / "empty", "lists no images")):
        with env_kept():
            code = main(["audit", "--model", "test_vit", "--weights", "random", "--images",
                         str(images), "--store", str(store)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and needle in err, err
        assert not store.exists()


def test_compare_audits_each_model_on_one_image_set(tmp_path, prefect_harness):
    from bfd.flows.compare import compare

    config = {**AUDIT, "layers": "all", "model": None}
    out = compare([{"model": "test_vit", "weights": "random", "seed": s} for s in (0, 1)],
                  config, str(tmp_path), dashboard=False)
    (pair,) = out["pairs"]
    assert (pair["run_a"], pair["run_b"]) == tuple(a["run_id"] for a in out["audits"])
    assert (pair["series_a"], pair["series_b"]) == ("test_vit@random-seed-0",
                                                    "test_vit@random-seed-1")
    heads = read_table(Store(str(tmp_path)), "heads").to_pandas()
    a, b = (heads[heads.run_id == pair[k]].set_index(["layer", "head"]).head_type
            for k in ("run_a", "run_b"))
    assert pair["n_head_type_changes"] == int((a != b.loc[a.index]).sum())
    changes = run_query(str(tmp_path), "head_type_changes",
                        {"run_a": pair["run_a"], "run_b": pair["run_b"]})
    assert changes.num_rows == pair["n_head_type_changes"]
    assert [r["trigger"] for r in read_audits(Store(str(tmp_path)))] == ["compare"] * 2


def test_flow_parameter_errors_name_the_field_as_prefect_shows_it(tmp_path, prefect_harness):
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match=r"config\.weights: .*x\.pth' does not exist"):
        audit({"model": "test_vit", "weights": str(tmp_path / "x.pth")}, str(tmp_path))
    with pytest.raises(ParameterTypeError, match=r"config\.n_image: Extra inputs"):
        audit({"model": "test_vit", "n_image": 3}, str(tmp_path))
    with pytest.raises(ValueError, match=r"config\.model is required"):
        audit({"weights": "random"}, str(tmp_path))
    assert not (tmp_path / "tables").exists()


def test_a_failed_audit_is_recorded_and_never_a_previous_audit(tmp_path, prefect_harness):
    """An audit whose work fails (its images turn out undecodable: only the extraction
    decodes them) is recorded as failed."""
    config = {**AUDIT, "weights": "random"}
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"{i}.jpg").write_bytes(f"not a jpeg {i}".encode())
    with pytest.raises(ValueError, match=r"has 0 decoded images; BFD needs at least 2"):
        audit({**config, "images": str(junk)}, str(tmp_path), series="s", step=1,
              dashboard=False)
    (failed,) = read_audits(Store(str(tmp_path)), "s")
    assert (failed["status"], failed["run_id"], failed["n_flagged"]) == ("failed", None, None)
    # and why, in the store's history (trial 26 F4: only Prefect's log said it)
    assert re.fullmatch(r"ValueError: run \S+ has 0 decoded images; BFD needs at least 2",
                        failed["error"]), failed["error"]
    out = audit(config, str(tmp_path), series="s", step=2, dashboard=False)
    assert out["prev_audit_id"] is None and out["n_flagged"] == 0


def test_a_request_refused_before_any_work_records_no_audit(tmp_path, prefect_harness,
                                                           capsys):
    """Weights that do not fit the model (a checkpoint of another model, which passes the
    first-bytes check) and layers out of range are the request's mistake: refused in one line
    before the audit's row is opened, by bfd audit (exit 2) as by the flow that a deployment
    runs, leaving no audit and no series; they were recorded as failed audits of a new
    series."""
    import timm
    import torch

    other = tmp_path / "test_vit2.pth"
    torch.save(timm.create_model("test_vit2", pretrained=False, img_size=64).state_dict(), other)
    store = tmp_path / "store"
    argv = ["audit", "--model", AUDIT["model"], "--images", "samples", "--n-images", "4",
            "--img-size", "64", "--layers", "0", "--dtype", "float32", "--store", str(store),
            "--no-dashboard"]
    with env_kept():
        code = main([*argv, "--weights", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"bfd: error: weights {str(other)!r} do not fit 'test_vit'"), err
    config = {**AUDIT, "weights": str(other)}
    with pytest.raises(ValueError, match="do not fit 'test_vit'"):
        audit(config, str(store), dashboard=False)
    with pytest.raises(ValueError, match=r"--layers: must be in \[0, 6\)"):
        audit({**config, "weights": "random", "layers": "0,9"}, str(store), series="s",
              step=1, dashboard=False)
    assert read_audits(Store(str(store))) == []
    assert not (store / "tables" / "audits").exists()


def test_checkpoints_count_as_audited_only_with_the_same_request(tmp_path, prefect_harness,
                                                                  capsys):
    """A checkpoint is audited again with other options (N, here), a model its weights do not
    fit is refused as bfd audit --weights refuses it, and a truncated checkpoint is named and
    left out while the readable one is audited (exit 2 at the end), decomposed with the
    decompose options given (bfd audit-checkpoints took none: the defaults, always)."""
    folder = tmp_path / "ckpts"
    make_checkpoints(tmp_path / "made")
    folder.mkdir()
    (tmp_path / "made" / "step_100.safetensors").rename(folder / "step_100.safetensors")
    store = str(tmp_path / "store")
    common = ["--n-images", "6", "--img-size", "64", "--layers", "0", "--dtype", "float32",
              "--images-per-chunk", "6", "--series", "s", "--store", store, "--no-dashboard"]

    def bfd(*argv: str) -> tuple[int, str, str]:
        """Its exit code, stdout and stderr."""
        capsys.readouterr()
        with env_kept():
            code = main(["audit-checkpoints", str(folder), *common, *argv])
        return code, *capsys.readouterr()

    assert bfd("--model", AUDIT["model"])[0] == 0
    code, out, _ = bfd("--model", AUDIT["model"])
    assert code == 0 and out.startswith("nothing to do") and "(1 of 1 files)" in out, out
    assert "same request (model test_vit, images samples (N 6), layers 0" in out, out
    code, out, err = bfd("--model", "test_vit2")  # deeper than the checkpoint's test_vit
    assert code == 2 and err.count("\n") == 1 and "do not fit 'test_vit2'" in err, err
    # other decompose options (the same run), and a truncated checkpoint before it: the
    # readable one is audited again (it said "nothing to do": only the request was compared)
    good = (folder / "step_100.safetensors").read_bytes()
    (folder / "step_50.safetensors").write_bytes(good[: len(good) // 2])
    options = ("--prefix", "include", "--control-seed", "3", "--jackknife-groups", "8")
    code, out, err = bfd("--model", AUDIT["model"], *options)
    assert code == 2 and "1 checkpoint(s) audited" in out, out + err
    errors = [line for line in err.splitlines() if line.startswith("bfd: error:")]
    assert len(errors) == 1 and errors[0].startswith("bfd: error: left out: weights file ")
    assert "step_50.safetensors' is not a readable .safetensors file" in errors[0], err
    # named before the first audit began (it was named at the end)
    lines = err.splitlines()
    assert lines.index(errors[0]) < min(i for i, line in enumerate(lines)
                                        if line.startswith("bfd: checkpoint 1 of 1 to audit"))
    audits = read_audits(Store(store), "s")
    assert [(a["step"], a["status"]) for a in audits if a["status"] == "complete"] == [
        (100, "complete"), (100, "complete")]
    done = [a for a in audits if a["run_id"]]
    assert done[0]["run_id"] == done[1]["run_id"]  # one run, decomposed again
    decomposed = [json.loads(a["decompose_json"]) for a in done]
    assert [(d["prefix"], d["seed"], d["jackknife_groups"]) for d in decomposed] == [
        ("exclude", 0, 16), ("include", 3, 8)]
    results = open_results(Store(store), done[-1]["run_id"])
    assert (results.attrs["prefix"], results.attrs["seed"]) == ("include", 3)
    # the truncated file is kept as left out; without a Prefect API the command answers
    # "nothing to do" without the flow while the files left out are those the store holds,
    # but beside a file newly left out it runs the flow, which records it (a cron job's
    # truncated checkpoint was lost: the answer without the flow recorded nothing)
    # (step_100, left out by the audit of test_vit2 given this series, cleared once audited)
    records = read_left_out(Store(store), "s")
    assert [(r["file"], r["step"], r["status"], r["reason"][:30]) for r in records] == [
        ("step_100.safetensors", 100, "left out", "weights '" + str(folder)[:21]),
        ("step_50.safetensors", 50, "left out", "weights file '" + str(folder)[:16]),
        ("step_100.safetensors", 100, "cleared", "audited")], records
    kept = records[1]
    from bfd import cli
    from bfd.cli_audits import audit_config
    from bfd.cli_reuse import nothing_to_audit

    with env_kept():
        os.environ.pop("PREFECT_API_URL", None)
        os.environ["PREFECT_HOME"] = str(tmp_path / "no-prefect")
        args = cli.build_parser().parse_args(["audit-checkpoints", str(folder), *common,
                                              "--model", AUDIT["model"], *options])
        config = audit_config(cli._extract_config(args))
        assert nothing_to_audit(args, config, store, "s")["bad"] == [kept["reason"]]
        (folder / "step_60.safetensors").write_bytes(b"junk")
        assert nothing_to_audit(args, config, store, "s") is None
        (folder / "step_60.safetensors").unlink()
    # ... and then audited with them: nothing to do, saying the options it compared
    (folder / "step_50.safetensors").unlink()
    code, out, _ = bfd("--model", AUDIT["model"], *options)
    assert code == 0 and out.startswith("nothing to do"), out
    assert ("dtype float32, --prefix include --control-seed 3 --jackknife-groups 8 and each "
            "file's sha256") in out, out
    # the file gone: cleared by that run of the flow
    assert [(r["file"], r["status"], r["reason"]) for r in read_left_out(Store(store), "s")
            ][3:] == [("step_50.safetensors", "cleared", "the file is gone")]


def test_a_checkpoint_that_does_not_load_is_left_out_and_the_others_audited(
        tmp_path, prefect_harness, capsys, monkeypatch):
    """Two files that pass the first-bytes check but not the load (a state_dict of another
    model; a cut pickle of the format before torch 1.6) are each named in one line and left
    out, with no audit recorded, while the checkpoints before and after them are audited
    (exit 2 at the end); the flow run ends Failed, naming them. The first such file stopped
    the series. Each checkpoint's lines are printed once its audit is done (they came all
    at the end), each left-out line once its file is tried, in step order, before the first
    audit (they came after the summary), and every line names a file as the folder was
    given, relative here (a file that did not load was named by its absolute path). The run
    counts the checkpoints to audit as its --dry-run does, without the files left out (its
    "checkpoint k of N to audit" lines counted them: 1 of 4, 4 of 4)."""
    import timm
    import torch
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from bfd.files import check_checkpoint
    from bfd.flows import progress

    folder = tmp_path / "ckpts"
    made = make_checkpoints(tmp_path / "made")
    folder.mkdir()
    made[0].rename(folder / "step_100.safetensors")
    made[1].rename(folder / "step_400.pth")
    torch.save(timm.create_model("test_vit2", pretrained=False, img_size=64).state_dict(),
               folder / "step_200.pth")
    torch.save(torch.load(made[2])["state_dict"], tmp_path / "legacy.pt",
               _use_new_zipfile_serialization=False)
    (folder / "step_300.pt").write_bytes((tmp_path / "legacy.pt").read_bytes()[:3000])
    for name in ("step_200.pth", "step_300.pt"):
        check_checkpoint(folder / name)  # their first bytes pass
    store = str(tmp_path / "store")
    monkeypatch.chdir(tmp_path)

    def audit_folder() -> tuple[int, str, str]:
        """Its exit code, stdout, stderr, and (in ``printed``, ``told``) its stdout and its
        stderr's left-out lines so far when each extraction began."""
        parts = []

        def at_each_extraction(stage: str, done: int, total: int, detail: dict) -> None:
            if stage == "extract" and done == 0:
                parts.append(capsys.readouterr())
                printed.append("".join(part.out for part in parts))
                told.append([line for part in parts for line in part.err.splitlines()
                             if line.startswith("bfd: error: left out: ")])

        capsys.readouterr()
        printed.clear()
        told.clear()
        with env_kept(), progress.listening(at_each_extraction):
            code = main(argv)
        parts.append(capsys.readouterr())
        return code, "".join(p.out for p in parts), "".join(p.err for p in parts)

    argv = ["audit-checkpoints", "ckpts", "--model", AUDIT["model"], "--n-images", "6",
            "--img-size", "64", "--layers", "0", "--dtype", "float32", "--images-per-chunk", "6",
            "--series", "s", "--store", store, "--no-dashboard"]
    printed: list[str] = []
    told: list[list[str]] = []
    # the dry run first: 2 to audit of the 4 files, 2 left out; the run says the same
    assert main([*argv, "--dry-run"]) == 2
    assert "4 checkpoint file(s): 2 to audit, 0 already audited with the same request" in (
        capsys.readouterr().out)
    code, out, err = audit_folder()
    assert code == 2 and "2 checkpoint(s) audited in series s" in out, out + err
    assert [line for line in err.splitlines() if " to audit: " in line] == [
        "bfd: checkpoint 1 of 2 to audit: step_100.safetensors (step 100)",
        "bfd: checkpoint 2 of 2 to audit: step_400.pth (step 400)"], err
    # step_100's lines were out when step_400's extraction began
    assert len(printed) == 2 and printed[0] == "", printed
    assert printed[1].startswith("ckpts/step_100.safetensors:\naudit ") and (
        "drift: first audit of this series" in printed[1]), printed
    assert out.startswith(printed[1]) and out.count("ckpts/step_100.safetensors:") == 1, out
    assert "\nckpts/step_400.pth:\naudit " in out, out
    errors = [line for line in err.splitlines() if line.startswith("bfd: error:")]
    assert len(errors) == 2, err
    assert errors[0].startswith("bfd: error: left out: weights 'ckpts/step_200.pth' do not fit "
                                "'test_vit': "), errors
    assert errors[1].startswith("bfd: error: left out: weights file 'ckpts/step_300.pt' is not "
                                "a readable checkpoint"), errors
    # steps 200 and 300 were named once tried: before the first extraction, not at the end
    assert told == [errors, errors], (told, err)
    # a bar for each audited checkpoint's extraction (the first bar's, closed, drew no other)
    # stderr is a pipe, no terminal: whole lines, no carriage-return redraws (trial 29)
    assert "\r" not in err, err
    bars = err.split("\n")
    assert sum(bar.startswith("extract: 100%") for bar in bars) == 2, err
    assert sum(bar.startswith("extract:   0% 0/") for bar in bars) == 2, err
    # the decomposition's line from its start (it came with its first (site, layer) done)
    assert sum(bar.startswith("decompose:   0% 0/2 layer") for bar in bars) == 2, err
    audits = read_audits(Store(store), "s")
    assert [(a["step"], a["status"]) for a in audits] == [(100, "complete"), (400, "complete")]
    assert audits[1]["prev_audit_id"] == audits[0]["audit_id"]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["audit-checkpoints"])))
    (run,) = [r for r in runs if r.parameters["checkpoints"] == "ckpts"
              and r.parameters["store"] == store]
    assert run.state.type.value == "FAILED", run.state
    # every file named (a schedule's line named the first alone, "and 1 more")
    assert run.state.message.startswith(
        "2 of 4 checkpoint file(s) left out (step_200.pth, step_300.pt), 2 audited: weights "
        "'ckpts/step_200.pth' do not fit"), run.state.message
    assert "(and 1 more)" in run.state.message
    # again: nothing to audit, and the line does not call the files left out unreadable (the
    # one of another model reads; it said "every readable checkpoint ... (2 of 4 files)")
    # each file left out is kept in the store (the dashboard and SQL read it): its name,
    # step, reason, when and by which run (F14: nothing said it once the command was done)
    kept = read_left_out(Store(store), "s")
    assert [(r["file"], r["step"], r["status"], r["checkpoints"], r["flow_run_id"])
            for r in kept] == [("step_200.pth", 200, "left out", "ckpts", str(run.id)),
                               ("step_300.pt", 300, "left out", "ckpts", str(run.id))], kept
    assert [r["reason"] for r in kept] == [e.removeprefix("bfd: error: left out: ")
                                           for e in errors]
    assert kept[0]["weights"] == str(tmp_path / "ckpts" / "step_200.pth")
    sql = run_sql(store, "SELECT series, file, step, reason FROM checkpoints_left_out")
    assert [(r["series"], r["file"], r["step"]) for r in sql.to_pylist()] == [
        ("s", "step_200.pth", 200), ("s", "step_300.pt", 300)]
    from bfd.queries import connect
    from bfd.report.data import series_data

    with connect(store) as con:
        page = series_data(con)["left_out"].to_pylist()
    assert [(r["series"], r["file"], r["step"]) for r in page] == [
        ("s", "step_200.pth", 200), ("s", "step_300.pt", 300)]
    assert page[0]["why"].startswith("do not fit 'test_vit': "), page
    assert page[1]["why"].startswith("not a readable checkpoint"), page
    records = sorted((Path(store) / "tables" / "left_out").glob("*/*.parquet"))
    assert len(records) == 1, records
    # again: nothing to audit, and the line does not call the files left out unreadable (the
    # one of another model reads; it said "every readable checkpoint ... (2 of 4 files)")
    code, out, err = audit_folder()
    assert code == 2 and out.startswith("nothing to do: every checkpoint of ckpts not left "
                                        "out (2 of 4 files; 2 left out) is already audited"), out
    assert err.count("bfd: error: left out: ") == 2, err
    # the same files left out for the same reasons: nothing more recorded
    assert sorted((Path(store) / "tables" / "left_out").glob("*/*.parquet")) == records
    # the dry run loads the file of another model as its audit would: left out, with its
    # line (it listed it as to audit)
    assert main([*argv, "--dry-run"]) == 2
    out = capsys.readouterr().out
    assert "4 checkpoint file(s): 0 to audit, 2 already audited with the same request" in out
    assert "\n  left out: weights 'ckpts/step_200.pth' do not fit 'test_vit': " in out, out
    # step_200 removed: nothing to audit, but the flow runs (not the answer without it) and
    # clears it; then step_300 fixed: audited, cleared; none left out
    (folder / "step_200.pth").unlink()
    code, out, err = audit_folder()
    assert code == 2 and out.startswith("nothing to do"), out + err
    assert [r["file"] for r in run_sql(store, "SELECT file FROM checkpoints_left_out")
            .to_pylist()] == ["step_300.pt"]
    made[2].rename(folder / "step_300.pt")
    code, out, err = audit_folder()
    assert code == 0 and "1 checkpoint(s) audited in series s" in out, out + err
    assert run_sql(store, "SELECT * FROM checkpoints_left_out").num_rows == 0
    cleared = [(r["file"], r["status"], r["reason"]) for r in read_left_out(Store(store), "s")]
    assert cleared[2:] == [("step_200.pth", "cleared", "the file is gone"),
                           ("step_300.pt", "cleared", "audited")], cleared


def test_checkpoint_steps_and_order(tmp_path):
    from bfd.tasks.audits import checkpoint_files, step_from_name

    names = {"epoch=3-step=1200.pt": 1200, "ckpt_0300.pth": 300, "iter20.safetensors": 20,
             "last.pth": None, "model.safetensors.index.json": None, "notes.txt": None}
    for name, step in names.items():
        (tmp_path / name).write_bytes(b"x")
        assert step_from_name(name) == step, name
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "step_1.pt").write_bytes(b"x")
    expected = ["iter20.safetensors", "ckpt_0300.pth", "epoch=3-step=1200.pt", "last.pth"]
    assert [p.name for p in checkpoint_files(str(tmp_path))] == expected
    assert [p.name for p in checkpoint_files(str(tmp_path / "*.pt"))] == ["epoch=3-step=1200.pt"]
    with pytest.raises(FileNotFoundError, match="no such folder or file"):
        checkpoint_files(str(tmp_path / "missing"))


def test_a_checkpoint_name_step_is_read_as_its_user_means_it(tmp_path):
    """Scientific notation and k/M multiples are one number (ckpt_1e4 was step 4, before
    ckpt_2000); a number that is no whole step is no step (the file goes by its mtime, after
    the others); the step word is a word (vit_1e4 is not it_1); a dotted part with digits is
    part of the name (vit_b16.step1000)."""
    from bfd.tasks.audits import checkpoint_files, step_from_name

    names = {"ckpt_1e4.pth": 10_000, "ckpt_1E+4.pth": 10_000, "step_1.5e3.pt": 1500,
             "ckpt_10k.pth": 10_000, "ckpt-2.5M.safetensors": 2_500_000, "ckpt_2.0.pth": 2,
             "vit_1e4.pth": 10_000, "vit_b16.step1000.pth": 1000, "ckpt_1.5.pth": None,
             "step_1.25e1.pt": None, "ckpt_1e30.pth": None, "ckpt_3e5f2a.pth": 2,
             "ckpt_10kimg.pth": 10}
    for name, step in names.items():
        assert step_from_name(name) == step, name
    for name in ("ckpt_2000.pth", "ckpt_1e4.pth", "ckpt_5k.pth", "ckpt_1.5.pth"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in checkpoint_files(str(tmp_path))] == [
        "ckpt_2000.pth", "ckpt_5k.pth", "ckpt_1e4.pth", "ckpt_1.5.pth"]


def test_audit_says_what_images_it_left_out(tmp_path, prefect_harness, capsys):
    """An unreadable image, fewer images than --n-images asked for, and too few for any
    interval: each said in a warning of the audit (the run used to go on silently)."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            folder / f"ok{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with env_kept():
        code = main(["audit", "--model", AUDIT["model"], "--weights", "random", "--images",
                     str(folder), "--n-images", "10", "--img-size", "32", "--layers", "0",
                     "--dtype", "float32", "--store", str(tmp_path / "store"),
                     "--no-dashboard"])
    err = capsys.readouterr().err
    assert code == 0
    # said when the images are listed, before the work, and again after the results
    early = err.index(f"--n-images 10, but {folder} holds 3 images; all 3 are used")
    assert early < err.index(f"--n-images 10, but {folder} holds 3 images; all 3 were audited")
    assert "1 of 3 images could not be read and were left out" in err
    assert "with N=2 images no interval could be computed" in err


def test_a_damaged_audit_file_refuses_its_series_until_moved_out(tmp_path, prefect_harness,
                                                                  capsys, caplog):
    """A truncated audit file of a series: the next audit of it is refused in one line naming
    the file and what to do (exit 1: a damaged store file), before its row is opened, so no
    failed audit piles up; it failed with pyarrow's raw message, exit 2, recording a failed
    audit each time. Moved out of the store, the series goes on from its last readable audit;
    reading commands meanwhile name the file and exit 1."""
    from bfd.storage import DamagedStoreError

    store = tmp_path / "store"
    argv = ["audit", "--model", AUDIT["model"], "--weights", "random", "--images", "samples",
            "--n-images", "6", "--img-size", "64", "--layers", "0", "--dtype", "float32",
            "--images-per-chunk", "6", "--store", str(store), "--no-dashboard", "--series",
            "s"]
    first = audit({**AUDIT, "weights": "random"}, str(store), series="s", step=1,
                  dashboard=False)
    audit({**AUDIT, "weights": "random"}, str(store), series="s", step=2, dashboard=False)
    folder = store / "tables" / "audits" / "s"
    files = sorted(folder.iterdir())
    damaged = files[-1]
    damaged.write_bytes(damaged.read_bytes()[:300])
    capsys.readouterr()
    with env_kept():
        code = main([*argv, "--step", "3"])
    err = capsys.readouterr().err
    assert code == 1, err
    (line,) = [x for x in err.splitlines() if x.startswith("bfd: error:")]
    assert line.startswith(f"bfd: error: {damaged} is damaged (Parquet magic bytes not found "
                           "in footer); the audit event it held is lost: move the file out of "
                           "the store and run the command again"), line
    with pytest.raises(DamagedStoreError, match="the audit event it held is lost"):
        audit({**AUDIT, "weights": "random"}, str(store), series="s", step=3,
              dashboard=False)
    assert sorted(folder.iterdir()) == files  # no failed audit recorded
    with env_kept():
        code = main(["query", "audit_history", "--param", "series=s", "--store", str(store),
                     "--format", "csv"])
    out, err = capsys.readouterr()
    assert code == 1 and first["audit_id"] in out, err
    assert any(f"audit event file {damaged} cannot be read" in r.getMessage()
               for r in caplog.records)
    assert err.splitlines()[-1].endswith("move the damaged audit files out of the store")
    # bfd verify checks a run; a damaged audit file of the store is noted beside it
    with env_kept():
        code = main(["verify", first["run_id"], "--store", str(store)])
    out, err = capsys.readouterr()
    assert code == 0 and "intact" in out, err
    assert err == (f"bfd: note (not of this run): {damaged} is damaged (Parquet magic bytes "
                   "not found in footer); the audit event it held is lost: move the file out "
                   "of the store and run the command again (the series' next audit then "
                   "compares with its last readable audit)\n")
    damaged.rename(tmp_path / damaged.name)
    out = audit({**AUDIT, "weights": "random"}, str(store), series="s", step=3,
                dashboard=False)
    assert out["prev_audit_id"] == first["audit_id"]


def test_how_an_audit_got_its_run_says_the_shards_kept_from_an_interrupted_one():
    """A resumed audit (an earlier one interrupted after 4 of 12 shards) said plain
    `computed`: the report now says what was kept, and what a stored run only decomposed."""
    from bfd.tasks.audits import run_reuse

    assert run_reuse(list(range(4, 12)), decomposed=True, n_shards=12) == (
        "computed (4 of its 12 shards of activations kept from an earlier extraction, 8 "
        "extracted)")
    assert run_reuse([], decomposed=True, n_shards=12) == (
        "computed (its activations stored already: none extracted)")
    assert run_reuse(list(range(12)), decomposed=True, n_shards=12) == "computed"
    assert run_reuse(decomposed=True) == "computed"  # stats-only: no shards
    assert run_reuse([2], [2], decomposed=True, n_shards=12) == (
        "computed (damaged shard 2 of its activations extracted again)")


def test_a_new_series_of_a_name_close_to_another_is_said(audited, tmp_path, capsys):
    """A mistyped --series (`test_vit@random-seed0`) started a new series with no word of the
    store's `test_vit@random-seed-0`: its first audit now names the close series."""
    root = tmp_path / "store"
    shutil.copytree(audited[0], root)
    argv = ["audit", "--model", "test_vit", "--weights", "random", "--images", "samples",
            "--n-images", "12", "--img-size", "64", "--dtype", "float32",
            "--images-per-chunk", "4", "--store", str(root)]
    capsys.readouterr()
    assert main([*argv, "--series", "test_vit@random-seed0"]) == 0
    out = capsys.readouterr().out
    assert ("note: series test_vit@random-seed0 is new; series of a close name in this store: "
            "test_vit@random-seed-0, test_vit2@random-seed-0 (a mistyped --series") in out, out
    # its second audit compares with the first: no note; nor has a series of a distant name
    assert main([*argv, "--series", "test_vit@random-seed0"]) == 0
    assert main([*argv, "--series", "nightly"]) == 0
    assert "note: series" not in capsys.readouterr().out


def test_an_audit_recorded_before_its_report_failed_is_named(audited, tmp_path, capsys,
                                                              monkeypatch):
    """Trial 30 (1c): an audit whose report then failed (a store file it could not read)
    ended with the error alone, exit 1, naming no audit: a retry recorded a second one. The
    line before the error names the audit recorded."""
    import bfd.cli_audits as cli_audits

    root = tmp_path / "store"
    shutil.copytree(audited[0], root)
    series = "test_vit@random-seed-0"
    before = {a["audit_id"] for a in read_audits(Store(root), series)}

    def unreadable(store, run_id):
        raise PermissionError(errno.EACCES, "Permission denied", f"{store}/tables/runs")

    monkeypatch.setattr(cli_audits, "positions_line", unreadable)
    capsys.readouterr()
    code = main(["audit", "--model", "test_vit", "--weights", "random", "--images", "samples",
                 "--n-images", "12", "--img-size", "64", "--dtype", "float32",
                 "--images-per-chunk", "4", "--step", "7", "--store", str(root)])
    err = capsys.readouterr().err
    (new,) = [a for a in read_audits(Store(root), series) if a["audit_id"] not in before]
    assert code == 1 and new["status"] == "complete" and new["step"] == 7
    *_, recorded, error = err.splitlines()
    assert recorded == (f"bfd: audit {new['audit_id']} of series {series} (step 7) was recorded "
                        f"(run {new['run_id']}), but the command failed after it (below): the "
                        "audit is kept, and a rerun records another audit")
    assert error.startswith(f"bfd: error: cannot write {root}/tables/runs: Permission denied")


@pytest.mark.slow
def test_ctrl_c_of_audit_checkpoints_ends_at_once_naming_the_audits_recorded(tmp_path):
    """Ctrl-C of `bfd audit-checkpoints` while its second checkpoint is being audited: exit
    130, one line naming the audit recorded, and a rerun audits the rest. It had no Ctrl-C
    of its own (not one of the pipeline commands): the temporary server died with the
    signal, and the command retried it for minutes, then ended in a traceback, exit 1."""
    import subprocess
    import sys

    make_checkpoints(tmp_path / "ckpts")
    store = tmp_path / "store"
    argv = ["audit-checkpoints", "ckpts", "--model", AUDIT["model"], "--n-images", "6",
            "--img-size", str(AUDIT["img_size"]), "--layers", "0", "--dtype", "float32",
            "--images-per-chunk", "6", "--series", "s", "--store", str(store),
            "--no-dashboard"]
    # SIGINT as the second checkpoint's audit starts (after the first's audit is recorded;
    # check_series is the flow audit's first step)
    code = interrupted_at("bfd.tasks.audits:check_series", argv, call=2)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    recorded = read_audits(Store(store), "s")
    # what the process said, when it recorded no audit (CI on a saturated machine, once)
    assert len(recorded) == 1, (proc.returncode, proc.stderr[-3000:])
    (first,) = recorded
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "bfd: interrupted after 1 audit(s) of series s were recorded (step(s) 100); the "
        "checkpoint in progress was not audited: a rerun audits it and the others not yet "
        "audited (its completed shards are kept)"), proc.stderr
    assert "Traceback" not in proc.stderr and (first["step"], first["status"]) == (
        100, "complete")


def test_the_drift_summary_names_the_head_types_the_audit_kept():
    """The summary above a long flagged list said `36 ? -> ?` for head-type changes: it read
    the types from the runs' current heads only, which an audit that keeps them never asks."""
    from bfd.cli_audits import drift_summary

    rows = [{"metric": "head_type", "layer": layer, "head": head, "delta": 1.0,
             "type_before": "position-position", "type_after": after}
            for layer, head, after in [(0, 0, "content-content"), (0, 1, "content-content"),
                                       (3, 2, "content-position")]]
    rows.append({"metric": "head_type", "layer": 5, "head": 0, "delta": 1.0,
                 "type_before": None, "type_after": None})  # drift written before types
    assert drift_summary(rows, {(5, 0): ("content-content", "position-position")}) == [
        "  head_type: 4 heads changed in layers 0, 3, 5 (2 position-position -> "
        "content-content, 1 position-position -> content-position, 1 content-content -> "
        "position-position)"]
    assert drift_summary(rows[3:], {}) == ["  head_type: 1 heads changed in layers 5 (1 ? -> ?)"]


def test_each_checkpoint_audit_of_the_json_record_names_the_dashboard_built():
    """`audit-checkpoints --format json` gave each audit `"dashboard": null` beside the
    top level's index.html: the dashboard is built once, after the audits, and is theirs."""
    from bfd.cli_audits import checkpoints_record

    one = {"audit_id": "a1", "series": "s", "run_id": "r1", "step": 100, "prev_audit_id": None,
           "n_flagged": 0, "drift_note": None, "dashboard": None, "checkpoint": "c/step_100.pt"}
    out = {"series": "s", "n_files": 1, "store": "/st", "compared": "...", "bad": [],
           "audits": [one], "dashboard": "/st/dashboard/index.html"}
    (audit,) = checkpoints_record(out)["audits"]
    assert audit["dashboard"] == "/st/dashboard/index.html"
    assert audit["checkpoint"] == "c/step_100.pt" and audit["flagged"] == []
    assert checkpoints_record({**out, "dashboard": None})["audits"][0]["dashboard"] is None


def test_intervals_turned_off_are_said_so_not_as_too_few_images(tmp_path, capsys):
    """An audit with --jackknife-groups 0 was told "with N=16 images no interval could be
    computed (... needs N >= 3)": its intervals are off because the user turned them off."""
    from dashstore import write_synthetic_run

    from bfd.cli_audits import print_interval_warning

    root = tmp_path / "store"
    nan = [float("nan")] * 2
    write_synthetic_run(root, "off", depth=2, layer_values={"ci_halfwidth": nan},
                        decompose={"jackknife_groups": 0})
    write_synthetic_run(root, "few", depth=2, layer_values={"ci_halfwidth": nan})
    capsys.readouterr()
    print_interval_warning(str(root), "off")
    assert capsys.readouterr().err == ("bfd: note: intervals are off (--jackknife-groups 0): "
                                       "the shares are point estimates\n")
    print_interval_warning(str(root), "few")
    assert "images no interval could be computed" in capsys.readouterr().err


def test_a_failed_check_against_the_model_is_in_the_audit_report(tmp_path, prefect_harness,
                                                                  capsys, monkeypatch):
    """A decomposition whose head maps double the model's logit scale (a wrong M: its check
    against the model is order 1, docs/checks.md): `bfd audit` says so in one warning line
    naming the run, layer and value, the audit's report (its Prefect artifact) says it above
    its per-layer table, which carries the check; the audit that reuses the run says it
    again."""
    from conftest import run_cli
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from bfd.core import head_maps
    from bfd.flows.prefect_io import artifact_key
    from bfd.tasks import decompose as decompose_tasks

    def wrong_scale(W, H, s, b=None):
        return head_maps(W, H, 2 * s, b)

    monkeypatch.setattr(decompose_tasks, "head_maps", wrong_scale)
    argv = ["audit", "--model", "test_vit", "--weights", "random", "--images", "samples",
            "--n-images", "4", "--img-size", "32", "--layers", "0", "--dtype", "float32",
            "--images-per-chunk", "4", "--store", str(tmp_path / "store"), "--no-dashboard",
            "--series", "failed-check", "--jackknife-groups", "0"]
    lines = []
    for _ in range(2):  # computed, then reused
        code, out, err = run_cli(argv, capsys)
        assert code == 0, err
        lines.append([x for x in err.splitlines() if "check against the model" in x])
    rid = read_audits(Store(tmp_path / "store"), "failed-check")[0]["run_id"]
    (line,), again = lines
    assert again == [line]
    assert line.startswith(f"bfd: warning: run {rid} fails the check against the model: "
                           "model_logit_residual "), line
    assert "at attn_in layer 0 (1 of 1 layer(s) above 0.001)" in line, line
    # the session's Prefect server holds other tests' audit reports: a series of its own
    with get_client(sync_client=True) as client:
        key = ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key("audit",
                                                                       "failed-check")]))
        reports = [x.data for x in client.read_artifacts(artifact_filter=key)
                   if x.type == "markdown"]
    assert len(reports) == 2  # each audit's report, the reused one's too
    for report in reports:
        assert f"- **{line.removeprefix('bfd: ')}**" in report
        assert "| model_logit_residual |" in report
    # audit-checkpoints --format json says it on stderr too (its lines are quiet: it said
    # nothing), the record alone on stdout
    import timm
    from safetensors.torch import save_file

    folder = tmp_path / "ckpts"
    folder.mkdir()
    model = timm.create_model("test_vit", pretrained=False, img_size=32)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              folder / "step_5.safetensors")
    at = argv.index("--weights")
    code, out, err = run_cli(["audit-checkpoints", str(folder), *argv[1:at], *argv[at + 2:],
                              "--format", "json"], capsys)
    assert code == 0, err
    (one,) = json.loads(out)["audits"]
    said = [x for x in err.splitlines() if "check against the model" in x]
    assert len(said) == 1 and said[0].startswith(
        f"bfd: warning: run {one['run_id']} fails the check against the model: "), err


def test_prefix_include_on_a_model_without_prefix_tokens_reuses_its_run_and_compares(
        tmp_path, prefect_harness, capsys):
    """A model without prefix tokens (class_token=False: SigLIP-like): --prefix include and
    exclude are the same positions and the same figures. An audit with --prefix include after
    one with exclude reuses the run, and its drift compares with it; it decomposed the run
    again and said 'not compared: they are shares over other positions' (trial 21, F7)."""
    from conftest import run_cli

    argv = ["audit", "--model", "test_vit", "--model-arg", "class_token=False",
            "--model-arg", "global_pool=avg", "--weights", "random", "--images", "samples",
            "--n-images", "4", "--img-size", "32", "--layers", "0", "--dtype", "float32",
            "--images-per-chunk", "4", "--store", str(tmp_path / "store"), "--no-dashboard",
            "--series", "s", "--jackknife-groups", "0"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "(the model has no prefix token)" in out, err
    code, out, err = run_cli([*argv, "--prefix", "include"], capsys)
    assert code == 0, err
    first, second = read_audits(Store(tmp_path / "store"), "s")
    assert second["run_id"] == first["run_id"]
    assert f"run {first['run_id']} reused, nothing recomputed" in out, out
    assert "decomposes it again" not in err and "other positions" not in out + err, (out, err)
    assert f"drift: 0 value(s) flagged against audit {first['audit_id']}" in out, out


def test_the_audit_table_counts_a_pruned_head_of_no_type(tmp_path, capsys, prefect_harness):
    """Trial 29: a layer of 2 heads, one pruned (its q and k zero: no energy, type
    undefined), read ``1 0 0`` in the audit's table and nothing said it had a second head."""
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model("test_vit", pretrained=False, img_size=32)
    state = model.state_dict()
    qkv, dh = state["blocks.0.attn.qkv.weight"], model.blocks[0].attn.head_dim
    d = qkv.shape[1]
    for part in range(2):  # head 0's query and key rows
        qkv[part * d:part * d + dh] = 0
        state["blocks.0.attn.qkv.bias"][part * d:part * d + dh] = 0
    torch.save(state, tmp_path / "pruned.pth")
    argv = ["audit", "--model", "test_vit", "--weights", str(tmp_path / "pruned.pth"),
            "--images", "samples", "--n-images", "4", "--img-size", "32", "--layers", "0",
            "--dtype", "float32", "--store", str(tmp_path / "store"), "--no-dashboard"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.split()[:1] == ["layer"])
    row = lines[lines.index(header) + 1].split()
    counts = dict(zip(header.split(), row, strict=True))
    assert counts["n_heads_undefined"] == "1", lines
    assert sum(int(counts[f"n_heads_{t}"]) for t in ("pp", "cp", "cc", "undefined")) == (
        model.blocks[0].attn.num_heads)


def test_a_full_disk_during_a_flow_is_one_line_naming_the_store(tmp_path, prefect_harness):
    """The disk filling up while a flow extracts (its third shard's write: ENOSPC): the run
    ends Failed in Prefect with one line naming the store and what to do, what `bfd serve`
    and the Prefect UI show (trial 26 F7: `OSError: [Errno 28] No space left on device`, no
    path, no advice); the shards written before are kept: the rerun extracts only the rest
    (each shard writes two sites: the first shard's are written)."""
    import bfd.tasks.extract as extract_tasks
    from bfd.faults import StoreWriteError

    store = str(tmp_path / "store")
    config = {"model": "test_vit", "weights": "random", "images": "samples", "n_images": 12,
              "img_size": 32, "dtype": "float32", "images_per_chunk": 4, "layers": "0"}
    real, calls = extract_tasks.write_shard, []

    def disk_fills(*args, **kwargs):
        calls.append(1)
        if len(calls) >= 3:  # the disk is full from the third shard's write on
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(extract_tasks, "write_shard", disk_fills)
        state = audit(config, store, series="s", step=1, dashboard=False, return_state=True)
    line = (f"no space left on store {store} (No space left on device); free space there and "
            "run it again: completed work is kept and a rerun resumes from it")
    assert state.is_failed()
    assert state.message == f"Flow run encountered an exception: StoreWriteError: {line}"
    with pytest.raises(StoreWriteError) as err:
        state.result()
    assert str(err.value) == line and isinstance(err.value.__cause__, OSError)
    assert read_table(Store(store), "runs").num_rows == 0  # nothing published
    # the failed audit's row keeps the same line (it kept `OSError: [Errno 28] ...`)
    (failed,) = read_audits(Store(store), "s")
    assert (failed["status"], failed["error"]) == ("failed", f"StoreWriteError: {line}")
    out = audit(config, store, series="s", step=2, dashboard=False)
    kept = re.fullmatch(r"computed \(([12]) of its 3 shards of activations kept from an "
                        r"earlier extraction, ([12]) extracted\)", out["how"])
    assert kept and int(kept[1]) + int(kept[2]) == 3, out["how"]


@pytest.mark.parametrize(("code", "file", "said"), [
    (errno.EROFS, "tables/audits/s/.a.parquet.tmp", "cannot write store {root} (Read-only file "
     "system, writing tables/audits/s/.a.parquet.tmp); make it writable or give the run "
     "another store: completed work is kept"),
    (errno.EACCES, "runs/r/shards/0.json", "cannot write store {root} (Permission denied, "
     "writing runs/r/shards/0.json); make it writable or give the run another store: "
     "completed work is kept"),
    (errno.ENOSPC, "/tmp/x", "no space left on the disk of /tmp/x (No space left on device); "
     "free space there and run it again: completed work is kept and a rerun resumes from it"),
    (errno.EROFS, "", "cannot write store {root} (Read-only file system); make it writable "
     "or give the run another store: completed work is kept"),  # the store's own folder
    (errno.EACCES, "/data/images/a.png", None),  # a file outside the store: not its disk
    (errno.ENOENT, "runs/r", None),
], ids=["read-only", "not-writable", "full-elsewhere", "its-root", "elsewhere",
        "not-a-disk-fault"])
def test_store_faults_say_the_store_and_what_to_do(tmp_path, code, file, said):
    """The line of each disk fault a flow meets (``bfd.faults.store_fault``), and the CLI's
    line of the same error, which names the store (it said `writing the store`)."""
    from bfd.faults import StoreWriteError, describe, store_faults

    root = str(tmp_path / "store")
    path = os.path.join(root, file)
    with pytest.raises(OSError) as err, store_faults(root):
        raise OSError(code, os.strerror(code), path)
    if said is None:
        assert not isinstance(err.value, StoreWriteError) and err.value.filename == path
        return
    assert str(err.value) == said.format(root=root)
    assert err.value.filename == root
    assert describe(err.value)[0] == 1 and root in describe(err.value)[1]


def test_store_faults_keep_bfd_s_own_disk_errors(tmp_path):
    """A refusal that says the disk's fault itself (a run that cannot fit: ENOSPC, raised
    before anything is written) is kept as it is: wrapped, its line was said twice over."""
    from bfd.faults import store_faults
    from bfd.tasks.extract import NotEnoughSpaceError

    refusal = NotEnoughSpaceError(errno.ENOSPC, "the run needs 78.2 MiB ...", str(tmp_path))
    with pytest.raises(NotEnoughSpaceError) as err, store_faults(str(tmp_path)):
        raise refusal
    assert err.value is refusal


def test_a_failed_audit_s_row_says_a_disk_fault_as_the_flow_does(tmp_path):
    """A full disk met in the audit's own steps (not a subflow's, whose error is already
    said so) is kept in the failed audit's row as the flow's line says it: it kept
    `OSError: [Errno 28] No space left on device` (trial 30)."""
    from bfd.faults import store_fault
    from bfd.tasks.audits import failure_said

    root = str(tmp_path / "store")
    full = OSError(errno.ENOSPC, "No space left on device", f"{root}/tables/audits/s/a.parquet")
    said = failure_said(full, root)
    assert said == f"StoreWriteError: {store_fault(full, root)}"
    assert said.startswith(f"StoreWriteError: no space left on store {root} (No space left "
                           "on device, writing tables/audits/s/a.parquet); free space there")
    assert failure_said(ValueError("bad\nsecond line"), root) == "ValueError: bad"
    assert failure_said(KeyboardInterrupt(), root) == "interrupted"


def test_a_dashboard_not_rebuilt_by_the_flow_is_said_on_stderr(tmp_path, capsys,
                                                                prefect_harness):
    """Trial 30: the disk filled while the audit's flow rebuilt the dashboard; the audit
    exited 0 with the dashboard broken and no word (the warning went to the flow run's log,
    shown with -v only). A file where the dashboard's folder goes fails the rebuild alike."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "dashboard").write_text("not a folder")
    argv = ["audit", "--model", "test_vit", "--weights", "random", "--images", "samples",
            "--n-images", "4", "--img-size", "32", "--layers", "0", "--dtype", "float32",
            "--store", str(store)]
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "not refreshed" in x]
    assert line.startswith("bfd: warning: catalog or dashboard not refreshed ("), err
    assert (store / "dashboard").read_text() == "not a folder"


def test_a_head_scaled_past_what_shares_see_is_said_after_the_drift(tmp_path, capsys,
                                                                     prefect_harness):
    """Layer 0's query and key weights scaled 4-fold: every head's map M_h 16-fold, its logit
    energy 256-fold, its shares and so drift unchanged (trial 32: a qkv replaced flagged the
    layers after it, none in its own). The audit says which heads' energy changed past 10-fold
    and the query that lists them, from the query's own figures."""
    import math

    import timm
    import torch
    from safetensors.torch import save_file

    from bfd.cli_audits import ENERGY_FACTOR

    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, img_size=32)
    heads = model.blocks[0].attn.num_heads
    state = model.state_dict()
    base = {k: v.contiguous() for k, v in state.items()}
    qkv = base["blocks.0.attn.qkv.weight"].clone()
    width = qkv.shape[0] // 3
    qkv[: 2 * width] *= 4.0  # the query and key rows
    scaled = {**base, "blocks.0.attn.qkv.weight": qkv,
              "blocks.0.attn.qkv.bias": base["blocks.0.attn.qkv.bias"] * torch.tensor(
                  [4.0] * (2 * width) + [1.0] * width)}
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    save_file(base, str(paths[0]))
    save_file(scaled, str(paths[1]))
    store = str(tmp_path / "store")
    outs = []
    for step, path in enumerate(paths, start=1):
        capsys.readouterr()
        with env_kept():
            assert main(["audit", "--model", "test_vit", "--weights", str(path), "--images",
                         "samples", "--n-images", "8", "--img-size", "32", "--layers", "0,1",
                         "--dtype", "float32", "--series", "s", "--step", str(step),
                         "--no-dashboard", "--store", store]) in (0, 3)
        outs.append(capsys.readouterr().out)
    assert "note: the logit energy" not in outs[0]
    runs = run_sql(store, "SELECT run_id FROM runs ORDER BY created_at").column(0).to_pylist()
    rows = run_query(store, "head_energy_changes", {"run_a": runs[0], "run_b": runs[1]},
                     check=False).to_pylist()
    past = [r for r in rows if abs(r["log_ratio"]) > math.log(ENERGY_FACTOR)]
    assert {r["layer"] for r in past} == {0} and len(past) == heads
    (line,) = [x for x in outs[1].splitlines() if x.startswith("note: the logit energy")]
    largest = max(past, key=lambda r: abs(r["log_ratio"]))
    assert line.startswith(
        f"note: the logit energy of {heads} head(s) changed more than 10-fold against the "
        f"audit compared with (layer 0: heads 0-{heads - 1}; largest x{largest['ratio']:.3g} "
        f"at layer 0 head {largest['head']}), which no share and so no drift metric sees"), line
    assert line.endswith(f"bfd query head_energy_changes --param run_a={runs[0]} --param "
                         f"run_b={runs[1]} --store {store}")
    assert 100 < largest["ratio"] < 1000  # 256 on these images, within the bias's say
