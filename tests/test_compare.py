"""compare_runs and the Parquet contract of the corrected shares and intervals, on results of
the real core written by the real table writer (no model, no Prefect)."""

from __future__ import annotations

import datetime as dt
import json
import shlex

import numpy as np
import pytest
import torch

from bfd.cli import main
from bfd.core import decompose_layer, head_maps, to_dataset
from bfd.queries import run_query, run_sql
from bfd.queries.catalog import CONTRACT
from bfd.storage import Store, heads_rows, layers_rows, write_table
from bfd.storage.tables import TABLE_SCHEMAS
from bfd.tasks.decompose import assemble_results
from bfd.tasks.drift import not_comparable

T, D, H, L = 8, 8, 2, 2


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def results(seed: int, n_images: int, pos_scale: float):
    """A two-layer run's results Dataset from planted activations (attn_in and resid)."""
    rng = np.random.default_rng(seed)
    P = pos_scale * np.random.default_rng(99).normal(size=(L, T, D))
    parts = []
    for layer in range(L):
        maps = head_maps(np.random.default_rng(100 + layer).normal(size=(3 * D, D)), H)
        for site in ("attn_in", "resid"):
            x = P[layer] + rng.normal(size=(n_images, T, D))
            res = decompose_layer(lambda x=x: [(0, x)], maps if site == "attn_in" else None)
            part = to_dataset(res, {"site": site, "layer": layer, "n_images": n_images})
            # as decompose_site_layer leaves a run without pos_embed or a logit-check capture
            parts.append(part.assign(pos_embed_cos=np.nan, model_logit_residual=np.nan,
                                     model_attn_residual=np.nan))
    return assemble_results(parts, {"run_id": f"r{seed}", "ci_target": 0.02})


def split_run(seed: int, n_images: int, frac_int: float, frac_pos: float = 0.05):
    """A two-layer run's results from planted activations x = P + I + Z whose population
    positional share is ``frac_pos`` (one P for every seed), interaction share ``frac_int``
    (Z: per-position noise, centred over each image's positions) and image share the rest
    (I: one offset per image): the trial's two checkpoints of equal positional share."""
    P = np.random.default_rng(98).normal(size=(T2, D2))
    P -= P.mean(0)
    P *= np.sqrt(frac_pos * T2 / (P ** 2).sum())
    rng = np.random.default_rng(seed)
    parts = []
    for layer in range(L):
        maps = head_maps(np.random.default_rng(100 + layer).normal(size=(3 * D2, D2)), H)
        img = rng.normal(size=(n_images, 1, D2)) * np.sqrt((1 - frac_pos - frac_int) / D2)
        z = rng.normal(size=(n_images, T2, D2)) * np.sqrt(frac_int * T2 / ((T2 - 1) * D2))
        x = P + img + (z - z.mean(1, keepdims=True))
        for site in ("attn_in", "resid"):
            res = decompose_layer(lambda x=x: [(0, x)], maps if site == "attn_in" else None)
            part = to_dataset(res, {"site": site, "layer": layer, "n_images": n_images})
            parts.append(part.assign(pos_embed_cos=np.nan, model_logit_residual=np.nan,
                                     model_attn_residual=np.nan))
    return assemble_results(parts, {"run_id": f"s{seed}", "ci_target": 0.02})


T2, D2 = 16, 32


def without_corrected(ds):
    """``ds`` as a run decomposed before the corrected shares were stored (NULL ``_adj``)."""
    return ds.assign({k: ds[k] * np.nan for k in ds.data_vars if "_adj" in k})


def publish(root, run_id: str, ds, model: str = "toy", skipped: int = 0, **run) -> None:
    """Publish ``ds`` as a complete run that requested ``skipped`` more images than it decoded
    (as bfd/tasks/publish.py writes runs.n_images and runs.n_skipped); ``run``: other columns
    of its ``runs`` row."""
    store = Store(root)
    write_table(store, "layers", model, run_id, layers_rows(ds))
    write_table(store, "heads", model, run_id, heads_rows(ds))
    row = {name: None for name in TABLE_SCHEMAS["runs"].names}
    row |= {"run_id": run_id, "model": model, "n_images": ds.attrs["n_images"] + skipped,
            "n_skipped": skipped, "status": "complete",
            "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), **run}
    write_table(store, "runs", model, run_id, [row])


def test_every_new_column_is_in_the_contract():
    ds = results(0, 24, 1.0)
    for table, rows in (("layers", layers_rows(ds)), ("heads", heads_rows(ds))):
        schema = TABLE_SCHEMAS[table]
        assert set(rows.column_names) == set(schema.names) - {"run_id", "model"}, table
        contract = [c.strip().split()[0] for c in CONTRACT[table].split(",")]
        assert contract == schema.names, table
    layers = layers_rows(ds).to_pylist()
    assert all(r["frac_pos_adj_lo"] <= r["frac_pos_adj"] <= r["frac_pos_adj_hi"] for r in layers)
    assert all(r["n_images_for_target"] >= 1 and r["ci_target"] == 0.02 for r in layers)


def test_compare_runs_flags_a_real_difference_and_says_which_shares(tmp_path):
    strong, weak, twin = results(1, 32, 1.5), results(2, 64, 0.0), results(3, 32, 1.5)
    for run_id, ds in (("strong", strong), ("weak", weak), ("twin", twin)):
        publish(tmp_path, run_id, ds)

    rows = run_query(tmp_path, "compare_runs", {"run_a": "weak", "run_b": "strong"}).to_pylist()
    assert {r["basis"] for r in rows} == {"adjusted"}  # 64 vs 32 images
    assert len(rows) == 2 * L * 4 + L * H * 4
    by = {(r["level"], r["site"], r["layer"], r["head"], r["metric"]): r for r in rows}
    for layer in range(L):
        r = by["layer", "attn_in", layer, None, "frac_pos"]
        a = float(weak.frac_pos_adj.sel(site="attn_in", layer=layer))
        b = float(strong.frac_pos_adj.sel(site="attn_in", layer=layer))
        assert r["delta"] == pytest.approx(b - a, rel=1e-12)
        se = np.hypot(float(weak.frac_pos_adj_se.sel(site="attn_in", layer=layer)),
                      float(strong.frac_pos_adj_se.sel(site="attn_in", layer=layer)))
        assert r["delta_se"] == pytest.approx(se, rel=1e-12)
        assert r["delta_lo"] > 0 and r["significant"] is True

    same = run_query(tmp_path, "compare_runs", {"run_a": "strong", "run_b": "twin"}).to_pylist()
    assert {r["basis"] for r in same} == {"adjusted"}  # equal N too: the chance level moves
    flagged = [r["significant"] for r in same]
    assert None not in flagged
    # two samples of one population: a flag is a false alarm (5 % each, correlated figures)
    assert sum(flagged) <= len(flagged) // 4
    for r in same:
        assert (r["delta_lo"] > 0 or r["delta_hi"] < 0) == r["significant"]


def test_compare_runs_counts_decoded_images_not_requested_ones(tmp_path):
    # "short" requested 22 and decoded 21; "full" decoded 22; "even" requested 23, decoded 22
    short, full, even = results(8, 21, 1.0), results(9, 22, 1.0), results(10, 22, 1.0)
    publish(tmp_path, "short", short, skipped=1)
    publish(tmp_path, "full", full)
    publish(tmp_path, "even", even, skipped=1)
    rows = run_query(tmp_path, "compare_runs", {"run_a": "short", "run_b": "full"}).to_pylist()
    assert {(r["basis"], r["n_images_a"], r["n_images_b"]) for r in rows} == {("adjusted", 21, 22)}
    r = next(r for r in rows if (r["level"], r["site"], r["layer"], r["metric"])
             == ("layer", "attn_in", 0, "frac_pos"))
    at = dict(site="attn_in", layer=0)
    assert r["value_a"] == pytest.approx(float(short.frac_pos_adj.sel(**at)), rel=1e-12)
    rows = run_query(tmp_path, "compare_runs", {"run_a": "even", "run_b": "full"}).to_pylist()
    assert {(r["basis"], r["n_images_a"], r["n_images_b"]) for r in rows} == {("adjusted", 22, 22)}
    r = next(r for r in rows if (r["level"], r["site"], r["layer"], r["metric"])
             == ("layer", "attn_in", 0, "frac_pos"))
    assert r["value_a"] == pytest.approx(float(even.frac_pos_adj.sel(**at)), rel=1e-12)


def test_compare_runs_of_a_run_without_corrected_shares_is_on_the_raw_basis(tmp_path):
    """A run decomposed before the corrected shares were stored (NULL _adj) is compared on
    the raw shares, with intervals at equal N; at another N its raw deltas hold the chance
    level's change with N, so they come without interval or significance."""
    old, new, other = results(11, 22, 1.0), results(12, 22, 1.0), results(13, 30, 1.0)
    publish(tmp_path, "old", without_corrected(old))
    publish(tmp_path, "new", new)
    publish(tmp_path, "other", other)
    at = dict(site="attn_in", layer=0)
    for run_b, n_b, intervals in (("new", 22, True), ("other", 30, False)):
        rows = run_query(tmp_path, "compare_runs", {"run_a": "old", "run_b": run_b}).to_pylist()
        assert {(r["basis"], r["n_images_a"], r["n_images_b"]) for r in rows} == {
            ("raw", 22, n_b)}
        r = next(r for r in rows if (r["level"], r["site"], r["layer"], r["metric"])
                 == ("layer", "attn_in", 0, "frac_pos"))
        assert r["value_a"] == pytest.approx(float(old.frac_pos.sel(**at)), rel=1e-12)
        assert all(r["delta"] is not None for r in rows)
        for c in ("delta_se", "delta_lo", "delta_hi", "significant"):
            assert all((r[c] is not None) == intervals for r in rows), (run_b, c)


def test_compare_runs_at_equal_n_does_not_flag_a_change_of_the_chance_level(tmp_path):
    """The trial (F0): two runs of equal N and equal population positional share whose
    interaction shares differ (0.90 against 0.05) differ in raw frac_pos by about
    Δfrac_int/(N-1), the chance level's change, which the raw basis (compare_runs' old rule at
    equal N) flagged significant; the corrected shares' expectation holds no chance level."""
    n = 16
    mixed, plain = split_run(21, n, frac_int=0.90), split_run(22, n, frac_int=0.05)
    publish(tmp_path, "mixed", mixed)
    publish(tmp_path, "plain", plain)
    # the same runs as if decomposed before the corrected shares were stored: compared on the
    # raw shares, as the old rule compared every pair of equal N
    publish(tmp_path, "mixed-raw", without_corrected(mixed))
    publish(tmp_path, "plain-raw", without_corrected(plain))
    rows = run_query(tmp_path, "compare_runs", {"run_a": "mixed", "run_b": "plain"}).to_pylist()
    raw = run_query(tmp_path, "compare_runs",
                    {"run_a": "mixed-raw", "run_b": "plain-raw"}).to_pylist()
    assert {(r["basis"], r["n_images_a"], r["n_images_b"]) for r in rows} == {
        ("adjusted", n, n)}
    assert {r["basis"] for r in raw} == {"raw"}
    key = lambda r: (r["level"], r["site"], r["layer"], r["head"], r["metric"])  # noqa: E731
    by, by_raw = {key(r): r for r in rows}, {key(r): r for r in raw}
    for layer in range(L):
        at = dict(site="attn_in", layer=layer)
        assert float(mixed.frac_int.sel(**at)) > 0.8 and float(plain.frac_int.sel(**at)) < 0.1
        r = by["layer", "attn_in", layer, None, "frac_pos"]
        assert r["value_a"] == pytest.approx(float(mixed.frac_pos_adj.sel(**at)), rel=1e-12)
        assert r["significant"] is False
        # raw: the chance level's change, about -Δfrac_int/(N-1) = -0.057, flagged
        r = by_raw["layer", "attn_in", layer, None, "frac_pos"]
        assert r["value_a"] == pytest.approx(float(mixed.frac_pos.sel(**at)), rel=1e-12)
        assert r["delta_hi"] < 0 and r["significant"] is True
    heads = [k for k in by if k[0] == "head"]
    assert len(heads) == L * H * 4
    assert not any(by[k]["significant"] for k in heads)
    assert sum(by_raw[k]["significant"] for k in heads) >= L * H


def test_compare_runs_says_when_the_runs_are_not_of_one_model(tmp_path):
    """Per-layer deltas of two models (another name, or another depth under one name) or of
    shares over other positions (prefix option) carry a note; other weights of one model (a
    pretrained tag, a checkpoint) do not. The figures are given all the same."""
    ds = results(5, 16, 1.0)
    shape = {"depth": L, "num_heads": H, "width": D}
    include = '{"decompose": {"prefix": "include"}}'
    for run_id, model, run in (("a", "vit_a", shape), ("a2", "vit_a", shape),
                               ("tagged", "vit_a.augreg_in21k", shape), ("old", "vit_a", {}),
                               ("other", "vit_b", shape), ("deeper", "vit_a", {**shape,
                                                                              "depth": L + 1}),
                               ("include", "vit_a", {**shape, "config_json": include}),
                               # no prefix token: include is exclude's positions (trial 21)
                               ("include0", "vit_a", {**shape, "config_json": include,
                                                      "prefix_tokens": 0})):
        publish(tmp_path, run_id, ds, model=model, **run)

    def pair(run_b: str) -> tuple[bool, str | None]:
        rows = run_query(tmp_path, "compare_runs", {"run_a": "a", "run_b": run_b}).to_pylist()
        assert len(rows) == 2 * L * 4 + L * H * 4 and all(r["delta"] == 0 for r in rows)
        ((same, note),) = {(r["same_model"], r["note"]) for r in rows}
        return same, note

    for one_model in ("a2", "tagged", "old"):  # "old": a run without depth, heads, width
        assert pair(one_model) == (True, None), one_model
    assert pair("other") == (False, "run_a is of vit_a, run_b of vit_b: two models, so layer l "
                             "of one is not layer l of the other (compare_models aligns "
                             "relative depth)")
    assert pair("deeper") == (False, f"run_a is of vit_a of depth {L}, {H} heads and width "
                              f"{D}, run_b of depth {L + 1}, {H} heads and width {D}: two "
                              "models, so layer l of one is not layer l of the other "
                              "(compare_models aligns relative depth)")
    assert pair("include") == (True, "run_a was decomposed with prefix exclude, run_b with "
                               "prefix include: shares over other positions")
    assert pair("include0") == (True, None)
    # drift of a series refuses the same pairs of models, in the same words
    store = Store(tmp_path)
    assert not_comparable(store, "a", "include").startswith(
        "previous audit's shares were decomposed with --prefix exclude, this audit's with "
        "--prefix include")
    assert not_comparable(store, "a", "include0") is None
    for one_model in ("a2", "tagged", "old"):
        assert not_comparable(store, "a", one_model) is None, one_model
    refused = "; not compared: layers and heads of two models are no change of one"
    assert not_comparable(store, "a", "other").startswith(
        "previous audit was of another model (vit_a, not vit_b)" + refused)
    assert not_comparable(store, "a", "deeper").startswith(
        f"previous audit was of another model (vit_a of depth {L}, {H} heads and width {D}, "
        f"not of depth {L + 1}, {H} heads and width {D})" + refused)


def test_compare_runs_says_when_the_runs_saw_other_images_or_another_img_size(tmp_path):
    """The trial: runs of one model's same weights on the samples, on a folder of noise and
    at another img_size (another patch grid) gave deltas with basis raw, same_model True and
    no note. Each pair now says why its deltas are no change of the model, as the drift check
    refuses it (the figures are given all the same)."""
    ds = results(5, 16, 1.0)
    samples, noise = "ab12cd34ef56" + "0" * 52, "cd34ab12ef56" + "1" * 52
    for run_id, images, sha, img_size in (
            ("s224", "samples", samples, 224), ("again", "samples", samples, 224),
            ("noise", "/data/noise_pngs/", noise, 224), ("s160", "samples", samples, 160),
            ("n160", "/data/noise_pngs", noise, 160)):
        publish(tmp_path, run_id, ds, model="vit_a", images=images, images_sha256=sha,
                img_size=img_size, weights_sha256="w" * 64)

    def pair(run_a: str, run_b: str) -> str | None:
        rows = run_query(tmp_path, "compare_runs", {"run_a": run_a, "run_b": run_b}).to_pylist()
        assert len(rows) == 2 * L * 4 + L * H * 4
        ((same, basis, note),) = {(r["same_model"], r["basis"], r["note"]) for r in rows}
        assert (same, basis) == (True, "adjusted")
        return note

    other_images = ("run_a saw images samples@ab12cd34ef56, run_b noise_pngs@cd34ab12ef56: "
                    "other images, whose shares change with the images, not only with the model")
    other_size = ("run_a was at img_size 224, run_b at 160: another patch grid, shares over "
                  "other positions")
    assert pair("s224", "again") is None
    assert pair("s224", "noise") == other_images
    assert pair("s224", "s160") == other_size
    assert pair("s224", "n160") == other_images + "; " + other_size
    assert pair("noise", "s224") == ("run_a saw images noise_pngs@cd34ab12ef56, run_b "
                                     "samples@ab12cd34ef56: other images, whose shares change "
                                     "with the images, not only with the model")
    # the drift check refuses exactly the pairs with a note (one rule)
    store = Store(tmp_path)
    ids = ("s224", "again", "noise", "s160", "n160")
    for a in ids:
        for b in ids:
            assert (not_comparable(store, a, b) is None) == (pair(a, b) is None), (a, b)


def test_compare_runs_says_when_the_runs_were_decomposed_by_other_methods(tmp_path, capsys):
    """A run published before methods were recorded (method 1: its head shares' jackknife
    standard errors off by up to 28 %) compared with one of method 2 gave deltas, intervals
    and significant without a word. The pair's note now says so and names the command that
    decomposes the older run again, and its head rows have no interval (the estimators
    differ); the layer rows, whose replicates are exact under both methods, and the deltas
    are those of the same pair by one method. A pair of one method is unchanged."""
    from bfd.core.method import RESULTS_METHOD, UNRECORDED_METHOD

    assert (UNRECORDED_METHOD, RESULTS_METHOD) == (1, 2)
    weak, strong = results(2, 64, 0.0), results(1, 32, 1.5)
    publish(tmp_path, "weak1", weak)  # no method recorded: read as method 1
    publish(tmp_path, "weak2", weak, method=2)
    publish(tmp_path, "strong2", strong, method=2)
    publish(tmp_path, "strong1", strong, method=1)
    assert {r["run_id"]: r["method"] for r in run_sql(
        tmp_path, "SELECT run_id, method FROM runs").to_pylist()} == {
        "weak1": 1, "weak2": 2, "strong2": 2, "strong1": 1}

    def compare(run_a: str, run_b: str) -> dict:
        rows = run_query(tmp_path, "compare_runs", {"run_a": run_a, "run_b": run_b}).to_pylist()
        assert len(rows) == 2 * L * 4 + L * H * 4
        return {(r["level"], r["site"], r["layer"], r["head"], r["metric"]): r for r in rows}

    def note(rows: dict) -> str | None:
        (value,) = {r["note"] for r in rows.values()}
        return value

    same = compare("weak2", "strong2")  # one method: as before
    assert note(same) is None
    assert all(r["significant"] is not None and r["delta_se"] is not None
               for r in same.values())
    assert any(r["significant"] for k, r in same.items() if k[0] == "head")
    assert note(compare("weak1", "strong1")) is None  # both of method 1: no other methods

    cross = compare("weak1", "strong2")
    assert note(cross) == (
        "run_a was decomposed by method 1, run_b by method 2: head shares' intervals of two "
        "estimators (method 1's standard errors off by up to 28 %), not compared; "
        "bfd decompose weak1 decomposes run_a again by the installed method")
    assert cross.keys() == same.keys()
    for key, r in cross.items():
        s = same[key]
        assert (r["basis"], r["value_a"], r["value_b"], r["delta"]) == (
            s["basis"], s["value_a"], s["value_b"], s["delta"]), key
        if key[0] == "head":  # no interval across two estimators, as raw shares of other N
            assert (r["delta_se"], r["delta_lo"], r["delta_hi"], r["significant"]) == (
                None, None, None, None), key
        else:  # the layer rows' replicates are exact in both methods: their interval kept
            assert (r["delta_se"], r["delta_lo"], r["delta_hi"], r["significant"]) == (
                s["delta_se"], s["delta_lo"], s["delta_hi"], s["significant"]), key
    assert note(compare("strong2", "weak1")) == (
        "run_a was decomposed by method 2, run_b by method 1: head shares' intervals of two "
        "estimators (method 1's standard errors off by up to 28 %), not compared; "
        "bfd decompose weak1 decomposes run_b again by the installed method")

    # run_pairs: the method is no reason in note (point shares, energies and head types are
    # the same under both methods: drift, head_type_changes and compare_models unchanged)
    pairs = {(r["run_a"], r["run_b"]): r for r in run_sql(
        tmp_path, "SELECT run_a, run_b, note, inputs_note, same_method, method_note "
        "FROM run_pairs").to_pylist()}
    assert pairs["weak1", "strong2"]["same_method"] is False
    assert pairs["weak1", "strong2"]["method_note"] == note(cross)
    assert pairs["weak2", "strong2"]["same_method"] is True
    assert pairs["weak2", "strong2"]["method_note"] is None
    assert all(r["note"] is None and r["inputs_note"] is None for r in pairs.values())
    for query in ("head_type_changes", "head_energy_changes"):
        rows = run_query(tmp_path, query, {"run_a": "weak1", "run_b": "strong2"}).to_pylist()
        assert {r["note"] for r in rows} <= {None}, query
    store = Store(tmp_path)
    assert not_comparable(store, "weak1", "weak2") is None  # drift compares them

    # bfd query prints the note and the NULL intervals
    assert main(["query", "compare_runs", "--store", str(tmp_path), "--param", "run_a=weak1",
                 "--param", "run_b=strong2", "--format", "jsonl"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == len(cross)
    assert {r["note"] for r in printed} == {note(cross)}
    assert {r["significant"] for r in printed if r["level"] == "head"} == {None}
    assert None not in {r["significant"] for r in printed if r["level"] == "layer"}


def test_a_pair_of_runs_is_named_by_its_audits_steps_too(tmp_path, capsys):
    """compare_runs, head_type_changes and head_energy_changes take a run as an audit of a
    series (series, step_a, step_b), as the Compare page's address does: the run of the
    latest complete audit at that step (trial 23: the command line took run ids only, so
    week 1 against week 12 meant looking the ids up first)."""
    from dashstore import write_reused_audits

    root = tmp_path / "store"
    write_reused_audits(root)  # ck: c-100 at 100, c-200 at 200 and 250, c-500 twice at 500
    for name in ("compare_runs", "head_type_changes", "head_energy_changes"):
        by_ids = run_query(root, name, {"run_a": "c-200", "run_b": "c-500"})
        assert by_ids.num_rows > 0 or name == "head_type_changes"
        assert run_query(root, name, {"series": "ck", "step_a": "250", "step_b": "500"}) == by_ids
        assert run_query(root, name, {"series": "ck", "step_a": 200, "run_b": "c-500"}) == by_ids
    argv = ["query", "compare_runs", "--store", str(root), "--format", "jsonl"]
    assert main([*argv, "--param", "series=ck", "--param", "step_a=100", "--param",
                 "step_b=500"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and {(r["run_a"], r["run_b"]) for r in rows} == {("c-100", "c-500")}
    # one line, exit 2, nothing read: a step with no audit (its steps named), a step without
    # its series, a run named twice, a step that is no integer
    for params, said in (
            (["series=ck", "step_a=300", "step_b=500"],
             "series 'ck' has no complete audit at step 300; its steps: 100, 200, 250, 500"),
            (["step_a=100", "run_b=c-500"], "step_a name(s) an audit step of a series: give "
                                            "series too"),
            (["series=ck", "step_a=100", "run_a=c-100", "run_b=c-500"],
             "run_a and step_a both name run A; give one of them"),
            (["series=ck", "step_a=ten", "run_b=c-500"], "step_a must be an integer step")):
        assert main([*argv, *[x for p in params for x in ("--param", p)]]) == 2, params
        assert said in capsys.readouterr().err, params
    assert main(["query", "--list"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("[run_a (required), run_b (required); or series with step_a and/or "
                        "step_b]") == 3
    assert "[series (required), audit_id (optional)]" in listed  # drift: a series of its own


def test_compare_runs_of_an_unknown_run_has_no_rows(tmp_path):
    publish(tmp_path, "strong", results(1, 16, 1.0))
    assert run_query(tmp_path, "compare_runs", {"run_a": "strong", "run_b": "nope"},
                     check=False).num_rows == 0
    with pytest.raises(ValueError, match="run_b 'nope' names no run of the store"):
        run_query(tmp_path, "compare_runs", {"run_a": "strong", "run_b": "nope"})


def test_layer_profile_shows_the_corrected_shares(tmp_path):
    ds = results(4, 24, 1.0)
    publish(tmp_path, "r", ds)
    rows = run_query(tmp_path, "layer_profile", {"model": "toy"}).to_pylist()
    assert [r["layer"] for r in rows] == list(range(L))
    for r in rows:
        at = dict(site="attn_in", layer=r["layer"])
        for name in ("frac_pos_adj", "frac_pos_adj_lo", "frac_pos_adj_hi", "frac_pos_chance"):
            assert r[name] == pytest.approx(float(ds[name].sel(**at)), rel=1e-12), name
        e = ds.energy_adj.sel(layer=r["layer"]).sum("head").values
        assert r["f_cp_adj"] == pytest.approx(e[2] / e.sum(), rel=1e-12)


def test_audit_summary_shows_intervals_and_warns_when_n_is_short(tmp_path, capsys):
    from bfd.cli_audits import print_statistics

    ds = results(5, 16, 1.0)
    publish(tmp_path, "r", ds)
    profile = run_query(tmp_path, "layer_profile", {"model": "toy"})
    print_statistics(str(tmp_path), "r", profile, demo=True)
    out, err = capsys.readouterr()
    assert "frac_pos_adj_lo" in out and "How to read this" in out and "bfd audit --model" in out
    # on the user's own images, their shared layout counts as position: said, with the check
    words = " ".join(out.split())
    assert ("a spatial layout they share (a centre bias, sky at the top) counts as position "
            "too" in words) and "every other image mirrored" in words
    # the advice names this run's own head figures and the command that lists their intervals
    # (not "f_cp_adj clearly above zero", which a random-init ViT's heads are too)
    text = " ".join(out.split())
    assert "clearly above zero" not in text
    cp = run_sql(str(tmp_path), "SELECT max(f_cp_adj) AS cp, count(*) AS n, count_if("
                 "f_cp_adj_lo > 0) AS above FROM heads WHERE run_id = 'r'").to_pylist()[0]
    assert f"f_cp_adj at most {cp['cp']:.3f}" in text
    assert f"interval of {cp['above']} of its {cp['n']} heads lies above zero" in text
    (line,) = [line for line in out.splitlines() if line.startswith("  bfd sql ")]
    argv = shlex.split(line)
    assert argv[:2] == ["bfd", "sql"] and "f_cp_adj_lo, f_cp_adj_hi" in argv[2]
    assert main(argv[1:]) == 0  # the command as printed lists every head with its intervals
    listed = capsys.readouterr().out.splitlines()
    assert "f_cp_adj_lo" in listed[0] and len(listed) == 1 + cp["n"]
    need = int(layers_rows(ds).to_pandas().n_images_for_target.max())
    assert err.startswith("bfd: warning: with N=16 images") and f"about {need} images" in err
    assert need > 16


def test_compare_models_carries_the_corrected_shares(tmp_path):
    a, b = results(6, 16, 0.5), results(7, 48, 1.5)
    publish(tmp_path, "ra", a, model="m_a", skipped=2)  # requested 18, decoded 16
    publish(tmp_path, "rb", b, model="m_b")
    rows = run_query(tmp_path, "compare_models", {"model_a": "m_a", "model_b": "m_b"}).to_pylist()
    assert [r["bin"] for r in rows] == [0, 9]  # depth 2: layer 0 and layer 1
    for r, layer in zip(rows, (0, 1), strict=True):
        assert (r["n_images_a"], r["n_images_b"]) == (16, 48)
        at = dict(site="attn_in", layer=layer)
        delta = float(b.frac_pos_adj.sel(**at)) - float(a.frac_pos_adj.sel(**at))
        assert r["delta_frac_pos_adj"] == pytest.approx(delta, rel=1e-12)
        ea, eb = (ds.energy_adj.sel(layer=layer).sum("head").values for ds in (a, b))
        assert r["delta_f_cc_adj"] == pytest.approx(eb[3] / eb.sum() - ea[3] / ea.sum())
        # each model's corrected shares too, not only their difference (trial 29)
        for k, block in enumerate(("pp", "pc", "cp", "cc")):
            assert r[f"f_{block}_adj_a"] == pytest.approx(ea[k] / ea.sum(), rel=1e-12)
            assert r[f"f_{block}_adj_b"] == pytest.approx(eb[k] / eb.sum(), rel=1e-12)


def test_flagged_drift_names_head_types_and_summarises_many_rows(tmp_path, capsys):
    """An audit's flagged drift as `bfd audit` prints it: each head whose type changed as
    `layer L head H: before -> after` (the types of both runs' heads table, not `head_type
    NULL NULL 1`), and above DRIFT_ROWS_SHOWN flagged rows a summary per metric first, each
    list capped with the query that lists the rest."""
    import pyarrow as pa

    from bfd.cli_audits import DRIFT_ROWS_SHOWN, print_flagged

    ds = results(1, 24, 1.0)
    publish(tmp_path, "before", ds)
    publish(tmp_path, "after", ds)
    base = heads_rows(ds).to_pylist()
    grid = [(layer, head) for layer in range(12) for head in range(3)]  # 36 heads
    changed = {key: "content-position" if key[1] else "position-position"
               for key in grid[:30]}  # 30 heads change: 20 to cp, 10 to pp
    for run_id, types in (("before", {}), ("after", changed)):
        rows = [{**base[k % len(base)], "layer": layer, "head": head,
                 "head_type": types.get((layer, head), "content-content")}
                for k, (layer, head) in enumerate(grid)]
        write_table(Store(tmp_path), "heads", "toy", run_id, rows)
    ids = {"series": "s", "step": 2, "audit_id": "A2", "prev_audit_id": "A1",
           "prev_run_id": "before", "run_id": "after"}
    flagged = [{**ids, "layer": layer, "head": head, "metric": "head_type", "before": None,
                "after": None, "delta": 1.0, "threshold": 0.5, "flagged": True}
               for layer, head in changed]
    flagged += [{**ids, "layer": layer, "head": None, "metric": "frac_pos", "before": 0.1,
                 "after": 0.1 + d, "delta": d, "threshold": 0.05, "flagged": True}
                for layer, d in zip((0, 1, 2, 3, 7, 9, 10, 11), np.linspace(0.35, 0.06, 8),
                                    strict=True)]
    flagged += [{**ids, "layer": layer, "head": head, "metric": "f_cc", "before": 0.9,
                 "after": 0.8, "delta": -0.1, "threshold": 0.05, "flagged": True}
                for layer in range(4, 12) for head in range(3)]
    flagged.sort(key=lambda r: -abs(r["delta"]))  # the drift query's order
    capsys.readouterr()
    print_flagged(pa.Table.from_pylist(flagged), str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert len(flagged) > DRIFT_ROWS_SHOWN
    assert out[:3] == [
        "  frac_pos: 8 layers (0-3, 7, 9-11), max |delta| 0.35",
        "  f_cc: 24 heads in layers 4-11, max |delta| 0.1",
        "  head_type: 30 heads changed in layers 0-9 (20 content-content -> content-position, "
        "10 content-content -> position-position)"]
    # the fractions that moved, largest first, DRIFT_ROWS_SHOWN of them, then the query
    assert out[3].split() == ["layer", "head", "metric", "before", "after", "delta",
                              "threshold"]
    table = out[4:4 + DRIFT_ROWS_SHOWN]
    assert [line.split()[2] for line in table] == ["frac_pos"] * 7 + ["f_cc"] * 13
    assert out[24] == (f"12 more: bfd query drift --param series=s --param audit_id=A2 "
                       f"--store {tmp_path}")
    assert len(out) == 25 + 1 + DRIFT_ROWS_SHOWN + 1
    assert out[25] == "head types changed (30):"
    assert out[26:28] == ["  layer 0 head 0: content-content -> position-position",
                          "  layer 0 head 1: content-content -> content-position"]
    assert out[-1] == (f"  10 more: bfd query head_type_changes --param run_a=before "
                       f"--param run_b=after --store {tmp_path}")
    # the command as printed lists every change, with both types
    assert main(shlex.split(out[-1].split(": ", 1)[1])[1:]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 30
    # a few rows: no summary, no cap
    capsys.readouterr()
    print_flagged(pa.Table.from_pylist(flagged[:2] + flagged[30:31]), str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[0] == "layer" and out[2] == "head types changed (2):"
    assert out[3:] == ["  layer 0 head 0: content-content -> position-position",
                       "  layer 0 head 1: content-content -> content-position"]
