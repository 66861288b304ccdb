"""Audits end to end: two real audits of two random-init models, every named query on them,
and `bfd audit --demo` as a user runs it."""

from __future__ import annotations

import numpy as np
import pytest

from bfd.cli import main
from bfd.flows.audit import audit
from bfd.queries import list_queries, run_query, run_sql

MODELS = {"test_vit": 6, "test_vit2": 8}  # name -> depth


@pytest.fixture(scope="module")
def store(tmp_path_factory, prefect_harness):
    root = str(tmp_path_factory.mktemp("audits"))
    for model in MODELS:
        audit({"model": model, "weights": "random", "images": "samples", "n_images": 12,
               "img_size": 64, "dtype": "float32", "images_per_chunk": 4}, root)
    return root


def test_every_named_query_runs_on_real_audits(store):
    params = {"layer_profile": {"model": "test_vit"}, "audit_history": {"model": "test_vit"},
              "compare_models": {"model_a": "test_vit", "model_b": "test_vit2"},
              "head_map": {"model": "test_vit2"}}
    run_ids = [r["run_id"] for r in run_sql(store, "SELECT run_id FROM runs").to_pylist()]
    params["compare_runs"] = {"run_a": run_ids[0], "run_b": run_ids[-1]}
    for name in list_queries():
        table = run_query(store, name, params.get(name, {}))
        assert table.num_rows > 0, name


def test_model_summary_is_energy_weighted(store):
    summary = run_query(store, "model_summary").to_pandas().set_index("model")
    assert set(summary.index) == set(MODELS)
    for model in MODELS:
        heads = run_sql(store, f"SELECT * FROM heads WHERE model = '{model}'").to_pandas()
        total = heads[["e_pp", "e_pc", "e_cp", "e_cc"]].to_numpy().sum()
        np.testing.assert_allclose(summary.loc[model, "f_cc"], heads.e_cc.sum() / total,
                                   rtol=1e-9)


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
    """`bfd audit --demo`: offline, default store from $BFD_STORE, summary table at the end."""
    monkeypatch.setenv("BFD_STORE", str(tmp_path / "store"))
    assert main(["audit", "--demo"]) == 0
    out = capsys.readouterr().out
    assert "vit_tiny_patch16_224" in out and "frac_pos" in out and "n_heads_cc" in out
    # it ends with the corrected shares, their intervals, how to read them, what to try next
    assert "frac_pos_adj_lo" in out and "How to read this" in out and "bfd audit --model" in out
    assert str(tmp_path / "store") in out
    runs = run_sql(str(tmp_path / "store"), "SELECT * FROM runs").to_pandas()
    assert list(runs.weights) == ["random"] and runs.n_images.iloc[0] == 64
    assert main(["query", "model_summary"]) == 0  # the same default store, no --store
    assert "vit_tiny_patch16_224" in capsys.readouterr().out
