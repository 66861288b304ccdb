"""Degenerate inputs get no label: a head or layer whose energies are zero or not finite has
NaN (NULL) fractions and head_type/mode_type ``undefined``, counted apart in SQL; inputs where
BFD is undefined (non-finite activations or weights, one patch position) are refused."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from conftest import env_kept
from storebuilder import build_run, random_run_arrays

import bfd
from bfd.cli import main
from bfd.flows.decompose import decompose
from bfd.queries import run_query, run_sql
from bfd.storage import Store, list_runs

N, T, D, H = 6, 9, 8, 2


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, T, D)).astype(np.float32)
    w = (rng.normal(size=(3 * D, D)) / np.sqrt(D)).astype(np.float32)
    return x, w


def _prune(w: np.ndarray, head: int) -> np.ndarray:
    """The qkv weight with one head's q, k and v rows zeroed (a pruned head)."""
    out, dh = w.copy(), w.shape[1] // H
    for part in range(3):
        out[part * D + head * dh:part * D + (head + 1) * dh] = 0
    return out


def test_a_pruned_head_is_undefined_and_the_others_keep_their_labels():
    x, w = _inputs()
    full = bfd.analyze(x, w, H, prefix_tokens=1)
    ds = bfd.analyze(x, _prune(w, 1), H, prefix_tokens=1)
    assert ds.head_type.values[1] == "undefined"
    assert np.isnan(ds.frac.values[1]).all() and np.isnan(ds.eff_rank.values[1])
    assert ds.k90.values[1] == 0  # no count of modes; NULL in the heads table
    assert (ds.mode_type.values[1] == "undefined").all()
    # its modes (sigma 0) have no alpha or beta: their singular vectors are arbitrary (they
    # had loadings of 0.45-0.90 in a trial, drawn in the alpha-beta figures as real modes)
    assert (ds.sigma.values[1] == 0).all()
    assert np.isnan(ds.alpha.values[1]).all() and np.isnan(ds.beta.values[1]).all()
    assert np.isfinite(ds.alpha.values[0]).all() and np.isfinite(ds.beta.values[0]).all()
    np.testing.assert_allclose(ds.alpha.values[0], full.alpha.values[0], rtol=1e-6)
    # head 0 is untouched by pruning head 1: same label and fractions as before
    assert ds.head_type.values[0] == full.head_type.values[0] != "undefined"
    np.testing.assert_allclose(ds.frac.values[0], full.frac.values[0], rtol=1e-6)
    assert np.nansum(ds.frac.values[0]) == pytest.approx(1.0)


def test_modes_past_a_heads_rank_have_no_type():
    """A head of rank 1 (one query and one key row; trial 16 planted them in a checkpoint):
    its other modes have sigma at rounding level, no alpha or beta, and were typed by the
    argmax of their rounding-noise energies (cc in the trial); they are undefined now, the
    real mode keeps its type."""
    x, w = _inputs()
    dh = D // H
    low = w.copy()
    rng = np.random.default_rng(1)
    for part in range(2):  # query and key rows of head 0 but its first at rounding level
        low[part * D + 1:part * D + dh] = 1e-16 * rng.normal(size=(dh - 1, D))
    ds = bfd.analyze(x, low, H, prefix_tokens=1, compute_dtype="float64")
    sigma = ds.sigma.values[0]
    assert sigma[0] > 0 and (sigma[1:] > 0).all() and (sigma[1:] <= sigma[0] * 1e-15).all()
    assert ds.mode_type.values[0, 0] in ("pp", "pc", "cp", "cc")
    assert (ds.mode_type.values[0, 1:] == "undefined").all()
    assert np.isnan(ds.alpha.values[0, 1:]).all()
    # the head itself and the other head keep their types
    assert "undefined" not in ds.head_type.values
    assert "undefined" not in ds.mode_type.values[1]


def test_constant_activations_leave_every_fraction_and_label_undefined():
    _, w = _inputs()
    ds = bfd.analyze(np.full((N, T, D), 0.5, np.float32), w, H, prefix_tokens=1)
    assert np.isnan(ds.frac_pos.values) and np.isnan(ds.frac_img.values)
    assert (ds.head_type.values == "undefined").all()
    assert (ds.mode_type.values == "undefined").all()
    assert np.isnan(ds.frac.values).all()


def test_overflowing_energies_are_undefined_not_content_content():
    x, w = _inputs()
    with np.errstate(over="ignore", invalid="ignore"):
        ds = bfd.analyze(x.astype(np.float64) * 1e170, w, H, prefix_tokens=1,
                         compute_dtype="float64")
    assert not np.isfinite(ds.energy.values).all()
    assert (ds.head_type.values == "undefined").all()
    assert np.isnan(ds.frac.values).all()


def test_sql_counts_undefined_heads_apart(prefect_harness, tmp_path):
    acts, qkv, heads = random_run_arrays(3, L=2, N=8, T=10, d=16, H=2)
    qkv[1, :, :] = 0  # every head of layer 1 pruned
    d, dh = 16, 8
    for part in range(3):  # and head 1 of layer 0
        qkv[0, part * d + dh:part * d + 2 * dh] = 0
    store = Store(tmp_path / "store")
    rid = build_run(store, acts, qkv, heads)
    with env_kept():
        decompose(rid, str(store.root))
    profile = {r["layer"]: r for r in run_query(str(store.root), "layer_profile",
                                                {"model": "toy_vit"}).to_pylist()}
    assert profile[0]["n_heads_undefined"] == 1 and profile[1]["n_heads_undefined"] == 2
    for row in profile.values():
        assert (row["n_heads_pp"] + row["n_heads_cp"] + row["n_heads_cc"]
                + row["n_heads_undefined"]) == row["n_heads"] == 2
    assert profile[1]["n_heads_cc"] == 0
    heads_rows = run_sql(str(store.root), "SELECT layer, head, head_type, f_cc, k90 FROM heads "
                         "WHERE head_type = 'undefined' ORDER BY layer, head").to_pylist()
    assert [(r["layer"], r["head"]) for r in heads_rows] == [(0, 1), (1, 0), (1, 1)]
    for r in heads_rows:
        assert r["k90"] is None and (r["f_cc"] is None or np.isnan(r["f_cc"]))
    (n_modes,) = run_sql(str(store.root), "SELECT count(*) AS n FROM modes WHERE layer = 1 "
                         "AND mode_type <> 'undefined'").column("n").to_pylist()
    assert n_modes == 0
    (summary,) = run_query(str(store.root), "model_summary", {}).to_pylist()
    assert summary["n_heads_undefined"] == 3 and summary["n_heads"] == 4


def test_decompose_refuses_a_run_with_one_patch_position(prefect_harness, tmp_path, capsys):
    acts, qkv, heads = random_run_arrays(4, L=1, N=6, T=2, d=16, H=2)
    store = Store(tmp_path / "store")
    rid = build_run(store, acts, qkv, heads)
    with env_kept():
        code = main(["decompose", rid, "--store", str(store.root)])
    err = capsys.readouterr().err
    assert code == 2 and "at least 2" in err and err.count("\n") == 1, err
    assert not (store.tables_dir / "runs").exists()


@pytest.mark.parametrize(("tensor", "layer"), [("pos_embed", 0), ("blocks.1.norm1.weight", 1)],
                         ids=["resid-of-layer-0", "attn_in-of-layer-1"])
def test_non_finite_activations_are_refused_naming_the_layer(prefect_harness, tmp_path, capsys,
                                                             tensor, layer):
    """Finite weights whose activations overflow float16 (it holds at most 65504) are refused
    at extraction, naming the layer; no shard is marked done."""
    state = timm.create_model("test_vit", pretrained=False, img_size=32).state_dict()
    state[tensor] = state[tensor] * 0 + 1e6
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    store = tmp_path / "store"
    with env_kept():
        code = main(["extract", "--model", "test_vit", "--weights", str(path), "--img-size",
                     "32", "--n-images", "4", "--layers", "0,1", "--dtype", "float16",
                     "--images-per-chunk", "4", "--store", str(store)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("bfd: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "non-finite activations" in errors[0] and f"layer {layer}" in errors[0], errors[0]
    assert "--dtype float32" in errors[0]
    (rid,) = list_runs(Store(store))
    assert not list(Store(store).shards_dir(rid).glob("*.json"))


def test_nan_weights_are_refused_at_load_naming_the_tensor(tmp_path):
    state = timm.create_model("test_vit", pretrained=False).state_dict()
    state["blocks.2.attn.proj.weight"][3, 4] = float("nan")
    path = tmp_path / "nan.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ValueError, match=r"blocks\.2\.attn\.proj\.weight"):
        bfd.models.load_model("test_vit", str(path))
    assert torch.isnan(state["blocks.2.attn.proj.weight"]).any()
