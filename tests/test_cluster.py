"""Extraction and decomposition on an existing Dask cluster (--dask-address) give the same
activations and results as the local run."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from checkpoints import AUDIT, make_checkpoints
from conftest import env_kept, run_cli
from distributed import LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from bfd.cli import main
from bfd.flows import progress, runners
from bfd.flows.audit import audit
from bfd.storage import Store, open_activations, read_table

CONFIG = {"model": "test_vit", "weights": "random", "images": "samples", "n_images": 8,
          "img_size": 32, "layers": "0,3", "dtype": "float32", "images_per_chunk": 4}


class Computed(SchedulerPlugin):
    """The keys of the tasks the cluster's workers computed (processing -> memory)."""

    def __init__(self) -> None:
        self.keys: list = []

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if (start, finish) == ("processing", "memory"):
            self.keys.append(key)


@pytest.fixture(scope="module")
def shared_cluster():
    """One Dask cluster of 2 worker processes for this module's tests (its start and its
    workers' imports paid once), and what its workers computed."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        computed = Computed()
        cluster.scheduler.add_plugin(computed)
        yield cluster, computed


@pytest.mark.slow
def test_cluster_run_equals_local_run(tmp_path, prefect_harness, shared_cluster):
    cluster, computed = shared_cluster
    local = audit(CONFIG, str(tmp_path / "local"))
    computed.keys.clear()
    remote = audit(CONFIG, str(tmp_path / "remote"), dask_address=cluster.scheduler_address)
    assert computed.keys, "no task ran on the cluster"
    assert remote["run_id"] == local["run_id"]
    a = open_activations(Store(local["store"]), local["run_id"]).load()
    b = open_activations(Store(remote["store"]), remote["run_id"]).load()
    for site in ("attn_in", "resid"):
        assert np.array_equal(a[site].values, b[site].values)
    ha = read_table(Store(local["store"]), "heads").to_pandas().sort_values(["layer", "head"])
    hb = read_table(Store(remote["store"]), "heads").to_pandas().sort_values(["layer", "head"])
    np.testing.assert_allclose(hb.e_cc.to_numpy(), ha.e_cc.to_numpy(), rtol=1e-12)
    assert list(hb.head_type) == list(ha.head_type)


@pytest.mark.slow
def test_audit_checkpoints_runs_on_the_cluster_it_is_given(tmp_path, prefect_harness, capsys,
                                                            shared_cluster):
    """``bfd audit-checkpoints --dask-address`` extracts and decomposes on that cluster (the
    command used to accept the option and run everything locally)."""
    cluster, computed = shared_cluster
    make_checkpoints(tmp_path / "ckpts")
    computed.keys.clear()
    with env_kept():
        code = main(["audit-checkpoints", str(tmp_path / "ckpts"), "--model", AUDIT["model"],
                     "--n-images", "4", "--img-size", "32", "--layers", "0",
                     "--dtype", "float32", "--images-per-chunk", "4", "--no-dashboard",
                     "--store", str(tmp_path / "store"),
                     "--dask-address", cluster.scheduler_address])
    assert code == 0 and "3 checkpoint(s) audited" in capsys.readouterr().out
    assert computed.keys, "no task ran on the cluster"


@pytest.mark.slow
def test_a_cluster_without_workers_is_said_and_the_run_goes_on_when_one_joins(
        tmp_path, prefect_harness, capsys, monkeypatch):
    """A cluster that has no worker leaves the command's tasks waiting: a line says so (trial
    30: an audit hung without one), and another when a worker joins; the run then completes."""
    monkeypatch.setattr(runners, "WATCH_EVERY_S", 0.2)
    monkeypatch.setattr(runners, "WORKERLESS_S", 1.0)
    started: list[subprocess.Popen] = []

    def listener(stage: str, done: int, total: int, detail: dict) -> None:
        if stage == "notice" and "has had no worker" in detail["text"] and not started:
            started.append(subprocess.Popen(
                [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1",
                 "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    with LocalCluster(n_workers=0, processes=True, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        try:
            with progress.listening(listener):
                code, out, err = run_cli(
                    ["extract", "--model", "test_vit", "--weights", "random", "--n-images", "4",
                     "--img-size", "32", "--layers", "0", "--dtype", "float32",
                     "--images-per-chunk", "4", "--store", str(tmp_path / "store"),
                     "--dask-address", address], capsys)
        finally:
            for worker in started:
                worker.terminate()
                worker.wait(30)
    assert code == 0, err
    assert started, "no line said that the cluster had no worker"
    assert (f"bfd: waiting: the Dask cluster at {address} has had no worker for 1 s, so "
            f"nothing runs; start one (dask worker {address}) or stop with Ctrl-C") in err
    assert f"bfd: the Dask cluster at {address} has 1 worker(s) again; going on" in err
    assert "extracted into" in out
