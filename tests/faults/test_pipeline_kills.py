"""`bfd extract` and `bfd decompose` killed with SIGKILL at 10 random moments (5 during the
extraction, 5 during the decomposition and its publish), each followed by the next try: SQL
never sees a partial run, and the run finally published equals an uninterrupted one bit for
bit (activations, results and every table row)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import env_kept
from test_publish_faults import state
from zygote import Zygote, zygote_env

from bfd.cli import main
from bfd.storage import RUN_TABLES, Store, open_activations, open_results

REPO = Path(__file__).resolve().parents[2]
N_SHARDS = 12
EXTRACT = ["extract", "--model", "test_vit", "--weights", "random", "--n-images",
           str(4 * N_SHARDS), "--img-size", "32", "--layers", "0,2", "--dtype", "float32",
           "--images-per-chunk", "4", "--images-per-shard", "4"]


def killed_at(zygote: Zygote, argv: list[str], ready, delay: float) -> int:
    """Run ``bfd argv`` in a process of its own, its own process group (forked by
    ``zygote``: tests/zygote.py), and SIGKILL it ``delay`` s after ``ready()`` first holds (or
    when it ends by itself); returns its exit status."""
    proc = zygote.start(argv)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode


@pytest.mark.slow
def test_ten_kills_across_extraction_and_decomposition(prefect_harness, tmp_path):
    with Zygote(zygote_env(), REPO) as zygote:
        ten_kills(zygote, tmp_path)


def ten_kills(zygote: Zygote, tmp_path: Path) -> None:
    rng = random.Random(1129)
    whole, store = Store(tmp_path / "whole"), Store(tmp_path / "killed")
    with env_kept():
        assert main([*EXTRACT, "--store", str(whole.root)]) == 0
    (rid,) = [p.name for p in whole.runs_dir.iterdir()]
    # an uninterrupted decompose process: how long from its start of work (its lock file) to
    # its publish (the run's pointer), the span in which the kills below fall
    lock, pointer = whole.run_dir(rid) / ".compute.lock", whole.run_dir(rid) / "published.json"
    lock.unlink()  # made by the extraction: made again as the decompose starts work
    times = {}

    def mark() -> bool:
        for name, path in (("lock", lock), ("pointer", pointer)):
            if name not in times and path.exists():
                times[name] = time.monotonic()
        return "pointer" in times

    assert killed_at(zygote, ["decompose", rid, "--store", str(whole.root)], mark,
                     0.0) in (0, -9)
    with env_kept():
        assert main(["decompose", rid, "--store", str(whole.root)]) == 0
    to_publish = times["pointer"] - times["lock"]
    reference = state(whole)
    empty = {table: [] for table in RUN_TABLES}

    def shards_done() -> int:
        return len(list(store.runs_dir.glob("*/shards/*.json")))

    # 5 kills while extracting: each after one or two further shards, plus jitter
    for _ in range(5):
        target = min(N_SHARDS, shards_done() + rng.randint(1, 2))
        killed_at(zygote, [*EXTRACT, "--store", str(store.root)],
                  lambda t=target: shards_done() >= t, rng.uniform(0.0, 0.05))
        assert state(store) == empty
    with env_kept():
        assert main([*EXTRACT, "--store", str(store.root)]) == 0
    assert shards_done() == N_SHARDS

    # 5 kills while decomposing: at a random moment of an uninterrupted decompose's work up
    # to its publish, counted from the moment the process has started working (its lock)
    started = store.run_dir(rid) / ".compute.lock"
    for _ in range(5):
        started.unlink(missing_ok=True)
        killed_at(zygote, ["decompose", rid, "--store", str(store.root)], started.exists,
                  rng.uniform(0.0, to_publish * 1.1))
        assert state(store) in (empty, reference)
    with env_kept():
        assert main(["decompose", rid, "--store", str(store.root)]) == 0

    assert state(store) == reference
    got, want = open_activations(store, rid), open_activations(whole, rid)
    for site in want.data_vars:
        assert np.array_equal(got[site].values, want[site].values), site
    xr.testing.assert_identical(open_results(store, rid).load(), open_results(whole, rid).load())
