"""``bfd audit --no-store-activations``: the decomposition fed by two forwards equals the one
read from a float32 store, and keeps no activations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from bfd.flows.audit import audit
from bfd.flows.decompose import decompose
from bfd.queries import run_sql
from bfd.storage import Store, open_activations, open_results

CONFIG = {"model": "test_vit", "weights": "random", "images": "samples", "n_images": 12,
          "img_size": 32, "layers": "0,2", "dtype": "float32", "images_per_chunk": 4,
          "batch_size": 4, "device": "cpu"}


@pytest.mark.slow
def test_stats_only_equals_the_stored_path(prefect_harness, tmp_path):
    stored_root, stats_root = str(tmp_path / "stored"), str(tmp_path / "stats")
    options = {"seed": 3}  # the split-half and shuffle controls must see the same images
    stored = audit(dict(CONFIG), stored_root, decompose_options=options, dashboard=False)
    stats = audit(dict(CONFIG), stats_root, decompose_options=options, dashboard=False,
                  store_activations=False)
    assert stats["run_id"] != stored["run_id"]

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
