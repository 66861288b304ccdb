"""The decompose flow over a real store: Parquet equals bfd.analyze on the same activations."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import xarray as xr
from storebuilder import build_run, random_run_arrays

import bfd
from bfd.flows.decompose import decompose
from bfd.storage import Store, open_results, read_pointer, read_table
from bfd.tasks import decompose as tasks_decompose
from bfd.tasks.decompose import DecomposeOptions, decompose_site_layer

SKIPPED = (3,)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store"))
    acts, qkv, H = random_run_arrays(0)
    rid = build_run(store, acts, qkv, H, skipped=SKIPPED)
    return store, rid, acts, qkv, H


def expected(acts, qkv, H, site, layer):
    keep = [i for i in range(acts[site].shape[1]) if i not in SKIPPED]
    x = acts[site][layer][keep]
    # the random controls are keyed on image indices, which differ here (3 is skipped), so
    # the tests compare every estimate but not the controls
    return x, bfd.analyze(x, qkv[layer], H, prefix_tokens=1)


@pytest.mark.parametrize("images_per_task", [1, 7, None])
def test_site_layer_equals_analyze_for_any_dask_chunking(run, images_per_task):
    store, rid, acts, qkv, H = run
    opts = DecomposeOptions(images_per_task=images_per_task)
    ds = decompose_site_layer(str(store.root), rid, "attn_in", 1, opts)
    _, ref = expected(acts, qkv, H, "attn_in", 1)
    for name in ("energy", "frac", "sigma", "alpha", "beta", "mode_energy", "frac_pos",
                 "frac_img", "frac_int", "pos", "mu", "eff_rank", "k90", "ss_total"):
        np.testing.assert_allclose(ds[name], ref[name], rtol=1e-6, err_msg=name)
    np.testing.assert_array_equal(ds.head_type, ref.head_type)
    assert ds.attrs["n_images"] == acts["attn_in"].shape[1] - len(SKIPPED)


@pytest.mark.parametrize("site", ["attn_in", "resid"])
def test_one_thread_task_equals_analyze_and_leaves_torch_threads(run, site, monkeypatch):
    """A task on one thread (what the flow asks when its tasks fill the cores) computes every
    chunk of both passes on its calling thread with one torch thread, gives the same results,
    and leaves torch's thread count as it was."""
    store, rid, acts, qkv, H = run
    seen = []

    def spy(f):
        def called(*args, **kw):
            seen.append((threading.get_ident(), torch.get_num_threads()))
            return f(*args, **kw)
        return called

    for name in ("_pass1", "_pass2"):
        monkeypatch.setattr(tasks_decompose, name, spy(getattr(tasks_decompose, name)))
    before = torch.get_num_threads()
    ds = decompose_site_layer(str(store.root), rid, site, 1, DecomposeOptions(), threads=1)
    assert torch.get_num_threads() == before
    assert len(seen) >= 2 and set(seen) == {(threading.get_ident(), 1)}
    _, ref = expected(acts, qkv, H, site, 1)
    names = ["frac_pos", "frac_img", "frac_int", "pos", "mu", "ss_total"]
    if site == "attn_in":
        names += ["energy", "frac", "sigma", "mode_energy"]
    for name in names:
        np.testing.assert_allclose(ds[name], ref[name], rtol=1e-6, err_msg=name)
    threaded = decompose_site_layer(str(store.root), rid, site, 1, DecomposeOptions())
    assert set(ds.data_vars) == set(threaded.data_vars)


def test_tasks_run_on_one_thread_each_only_when_they_fill_the_cores():
    """The flow asks one thread per task where as many run at once as there are cores; not
    on a Dask cluster, nor where a smaller thread pool (Prefect's setting) or fewer tasks
    leave cores free."""
    from prefect.settings import PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS, temporary_settings

    from bfd.flows.runners import local_cores, one_thread_per_task

    cores = local_cores()
    assert one_thread_per_task(cores) == 1
    assert one_thread_per_task(24 * cores, dask_address="tcp://127.0.0.1:8786") is None
    with temporary_settings({PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS: cores}):
        assert one_thread_per_task(24 * cores) == 1
    if cores > 1:
        assert one_thread_per_task(cores - 1) is None
        with temporary_settings({PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS: cores - 1}):
            assert one_thread_per_task(24 * cores) is None


def test_device_option_equals_analyze(run):
    """On the CPU here; tests/test_cuda.py asserts the CUDA path on a device."""
    store, rid, acts, qkv, H = run
    ds = decompose_site_layer(str(store.root), rid, "attn_in", 0, DecomposeOptions(device="cpu"))
    _, ref = expected(acts, qkv, H, "attn_in", 0)
    for name in ("energy", "sigma", "mode_energy", "frac_pos", "ss_total", "pos"):
        np.testing.assert_allclose(ds[name], ref[name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize(("device", "message"), [
    ("tpu", "device must be auto, cpu, cuda or cuda:K; got 'tpu'"),
    pytest.param("cuda", "asked for, but torch sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
])
def test_bad_device_is_one_line_error(run, device, message):
    store, rid, *_ = run
    with pytest.raises(ValueError, match=message) as err:
        decompose_site_layer(str(store.root), rid, "resid", 0, DecomposeOptions(device=device))
    assert "\n" not in str(err.value)


def test_chunkings_agree_exactly_on_random_controls(run):
    store, rid, *_ = run
    a = decompose_site_layer(str(store.root), rid, "resid", 0, DecomposeOptions(images_per_task=1))
    b = decompose_site_layer(str(store.root), rid, "resid", 0, DecomposeOptions())
    xr.testing.assert_allclose(a, b, rtol=1e-10)
    assert "energy" not in a  # Stage 2 is defined at attn_in only


def test_flow_publishes_parquet_equal_to_analyze(run, prefect_harness):
    store, rid, acts, qkv, H = run
    written = decompose(rid, store=str(store.root))
    assert {"results", "layers", "heads", "modes", "images", "runs"} <= set(written)

    heads = read_table(store, "heads").to_pandas().sort_values(["layer", "head"])
    modes = read_table(store, "modes").to_pandas().sort_values(["layer", "head", "mode"])
    layers = read_table(store, "layers").to_pandas()
    L = acts["attn_in"].shape[0]
    for layer in range(L):
        _, ref = expected(acts, qkv, H, "attn_in", layer)
        h = heads[heads.layer == layer]
        for k, b in enumerate(("pp", "pc", "cp", "cc")):
            np.testing.assert_allclose(h[f"e_{b}"], ref.energy[:, k], rtol=1e-6)
            np.testing.assert_allclose(h[f"f_{b}"], ref.frac[:, k], rtol=1e-6)
        assert list(h.head_type) == list(ref.head_type.values)
        m = modes[modes.layer == layer]
        np.testing.assert_allclose(m.sigma, ref.sigma.values.ravel(), rtol=1e-6)
        np.testing.assert_allclose(m.alpha, ref.alpha.values.ravel(), rtol=1e-6)
        for site in ("attn_in", "resid"):
            _, r = expected(acts, qkv, H, site, layer)
            row = layers[(layers.layer == layer) & (layers.site == site)]
            np.testing.assert_allclose(row.frac_pos, float(r.frac_pos), rtol=1e-6)
            assert float(row.ss_identity_residual.iloc[0]) < 1e-10

    runs = read_table(store, "runs").to_pandas()
    assert list(runs.status) == ["complete"] and runs.n_skipped.iloc[0] == len(SKIPPED)
    images = read_table(store, "images").to_pandas()
    assert images.set_index("image_index").loc[3, "status"] == "skipped"
    res = open_results(store, rid)
    assert set(res.site.values) == {"attn_in", "resid"}
    assert res.energy.dims == ("layer", "head", "block")
    assert res.attrs["model"] == "toy_vit" and res.attrs["run_id"] == rid
    # results' positions carry the activations' token index: patches only, never the CLS token
    acts_ds = xr.open_zarr(store.zarr_path, group=rid, consolidated=False, zarr_format=3)
    assert list(res.position.values) == list(acts_ds.token.values[1:])
    assert (acts_ds.token_type.sel(token=res.position.values) == "patch").all()
    # the integer dtypes docs/layout.md states: int64 in the results group, int32 in the tables
    assert {n: str(res[n].dtype) for n in ("layer", "head", "mode", "position", "dim", "k90")
            } == dict.fromkeys(("layer", "head", "mode", "position", "dim", "k90"), "int64")
    assert {str(t[c].dtype) for t, cols in ((heads, ("layer", "head", "k90")),
                                            (modes, ("mode",))) for c in cols} == {"int32"}
    tree = xr.open_datatree(store.zarr_path, group=rid, engine="zarr", consolidated=False,
                            zarr_format=3)
    published = read_pointer(store, rid)["results"].split("/")[-1]  # results-<version>
    assert "frac_pos_adj" in tree[published].dataset and "attn_in" in tree.dataset
    for layer in range(L):
        _, ref = expected(acts, qkv, H, "attn_in", layer)
        row = layers[(layers.layer == layer) & (layers.site == "attn_in")]
        np.testing.assert_allclose(row.frac_pos_adj, float(ref.frac_pos_adj), rtol=1e-6)
        assert float(row.frac_pos_adj_lo.iloc[0]) <= float(row.frac_pos_adj.iloc[0])


def test_partial_extraction_is_refused_and_nothing_is_published(tmp_path, prefect_harness,
                                                                capsys):
    """An extraction stopped after 2 of 3 shards (killed, or still running elsewhere): the
    decomposition is refused in one line that names the missing shard and the command that
    finishes it, and the tables and results stay as they were."""
    from conftest import env_kept

    from bfd.cli import main
    from bfd.queries import run_sql

    store = Store(tmp_path / "store")
    acts, qkv, H = random_run_arrays(1, N=12)
    complete = build_run(store, acts, qkv, H)
    decompose(complete, store=str(store.root))
    before = run_sql(str(store.root), "SELECT * FROM runs")
    partial = build_run(store, acts, qkv, H, model="toy_other", shards_done=2)
    with env_kept():
        code = main(["decompose", partial, "--store", str(store.root)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("bfd: error: ")
    assert "shard(s) 2 (images 8-11, 4 of 12)" in err
    assert "--model toy_other --weights random --images planted --n-images 12" in err
    assert "--images-per-chunk 4" in err and f"--store {store.root}" in err
    assert run_sql(str(store.root), "SELECT * FROM runs").equals(before)
    assert not (store.root / "runs" / partial / "published.json").exists()
    with pytest.raises(FileNotFoundError):
        open_results(store, partial)
    with pytest.raises(ValueError, match="not completely extracted"):
        decompose_site_layer(str(store.root), partial, "resid", 0, DecomposeOptions())


def test_a_failed_check_against_the_model_is_said_and_summarised(tmp_path, prefect_harness,
                                                                 capsys, caplog):
    """A run whose stored logit-check capture is not its model's (the queries of layer 1
    perturbed by half their size: a wrong M gives order 1, docs/checks.md): `bfd decompose`
    says so in one warning line naming the run, layer and value, the decompose flow's log
    says it, and model_summary carries the largest check; a run whose capture is its model's
    gets no warning and a check at rounding level."""
    from conftest import run_cli
    from storebuilder import planted_logit_check

    from bfd.queries import run_query

    store = Store(tmp_path / "store")
    acts, qkv, H = random_run_arrays(2, L=2, N=6, T=5, d=8)
    bias = np.random.default_rng(3).normal(size=(2, 3 * 8)).astype(np.float32)
    runs = {}
    for model, noise in (("toy_good", 0.0), ("toy_bad", 0.5)):
        check = planted_logit_check(acts["attn_in"], qkv, bias, H, [0, 1])
        rng = np.random.default_rng(4)
        check["q"][1] *= 1 + noise * rng.standard_normal(check["q"][1].shape)
        runs[model] = build_run(store, acts, qkv, H, model=model, qkv_bias=bias,
                                logit_check=check)
    said = {}
    for model, rid in runs.items():
        caplog.clear()
        code, out, err = run_cli(["decompose", rid, "--store", str(store.root),
                                  "--jackknife-groups", "0"], capsys)
        assert code == 0, err
        said[model] = ([x for x in err.splitlines() if "check against the model" in x],
                       [r.getMessage() for r in caplog.records
                        if "check against the model" in r.getMessage()])
    assert said["toy_good"] == ([], [])
    (line,), logged = said["toy_bad"]
    assert line.startswith(f"bfd: warning: run {runs['toy_bad']} fails the check against the "
                           "model: model_logit_residual "), line
    assert "at attn_in layer 1 (1 of 2 layer(s) above 0.001)" in line, line
    assert logged == [line.removeprefix("bfd: ")]
    layers = read_table(store, "layers").to_pandas().set_index(["run_id", "site", "layer"])
    bad = layers.loc[(runs["toy_bad"], "attn_in"), "model_logit_residual"]
    assert bad[1] > 0.1 and bad[0] < 1e-5  # the limit is 1e-3
    assert f"model_logit_residual {bad[1]:.3g} at" in line
    summary = run_query(str(store.root), "model_summary").to_pandas().set_index("model")
    assert summary.loc["toy_bad", "model_logit_residual_max"] == pytest.approx(bad.max())
    assert summary.loc["toy_good", "model_logit_residual_max"] < 1e-5
    assert summary.loc["toy_bad", "model_attn_residual_max"] == pytest.approx(2e-7)
