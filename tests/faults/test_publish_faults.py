"""Publishing under faults: a failed, a disk-full or a killed publish leaves the previous version
listed, SQL never sees a mix of two versions, and a rerun equals an uninterrupted run bit for bit.

Two versions of one run tell apart: the same activations decomposed with control seeds 0 and 1
(the shuffle control differs, and the seed is in ``runs.config_json``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # storebuilder, conftest

from storebuilder import build_run, random_run_arrays  # noqa: E402
from zygote import Zygote, zygote_env  # noqa: E402

from bfd.queries import refresh_catalog, run_sql  # noqa: E402
from bfd.storage import (  # noqa: E402
    RUN_TABLES,
    Store,
    layers_rows,
    open_results,
    read_pointer,
    read_request,
    read_table,
    table_faults,
)
from bfd.storage.published import Publication  # noqa: E402
from bfd.storage.results import remove_group, results_groups  # noqa: E402
from bfd.tasks.decompose import (  # noqa: E402
    DecomposeOptions,
    assemble_results,
    decompose_site_layer,
)
from bfd.tasks.publish import publish, runs_row  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def results_for(store: Store, rid: str, seed: int) -> xr.Dataset:
    """What the decompose flow publishes for ``seed``, from the plain task functions."""
    options = DecomposeOptions(seed=seed)
    parts = [decompose_site_layer(str(store.root), rid, site, layer, options)
             for site in ("attn_in", "resid") for layer in range(2)]
    return assemble_results(parts, {"run_id": rid, **options.to_dict(), "images_per_task": 0})


def config(seed: int) -> dict:
    return {"decompose": DecomposeOptions(seed=seed).to_dict()}


def state(store: Store) -> dict[str, list]:
    """Every published row, as SQL sees it (``created_at`` aside: it records when)."""
    out = {}
    for table in RUN_TABLES:
        columns = "* EXCLUDE (created_at)" if table == "runs" else "*"
        out[table] = run_sql(str(store.root),
                             f"SELECT {columns} FROM {table} ORDER BY ALL").to_pylist()
    return out


def files_left(store: Store, rid: str) -> dict[str, list[str]]:
    out = {t: sorted(os.listdir(store.tables_dir / t / rid)) for t in RUN_TABLES
           if (store.tables_dir / t / rid).is_dir()}
    out["zarr"] = sorted(n for n in os.listdir(Path(store.zarr_path) / rid)
                         if n.startswith("results"))
    return out


def only_published(store: Store, rid: str) -> dict[str, list[str]]:
    version = read_pointer(store, rid)["version"]
    return {**{t: [f"part-{version}.parquet"] for t in RUN_TABLES},
            "zarr": [f"results-{version}"]}


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """A store with one run published with seed 0, and the results of seed 0 and 1."""
    store = Store(tmp_path_factory.mktemp("faults") / "store")
    acts, qkv, H = random_run_arrays(3, L=2, N=12, T=10, d=16)
    rid = build_run(store, acts, qkv, H)
    results = {seed: results_for(store, rid, seed) for seed in (0, 1)}
    publish(str(store.root), rid, results[0], config(0))
    return store, rid, results


def fresh_copy(two_versions, tmp_path: Path) -> tuple[Store, str, dict]:
    store, rid, results = two_versions
    shutil.copytree(store.root, tmp_path / "store")
    return Store(tmp_path / "store"), rid, results


def test_failed_publish_leaves_previous_version_in_sql(two_versions, tmp_path):
    store, rid, results = fresh_copy(two_versions, tmp_path)
    old, pointer = state(store), read_pointer(store, rid)
    writes, real = 0, pq.write_table

    def fails_third(*args, **kwargs):
        nonlocal writes
        writes += 1
        if writes == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pq, "write_table", fails_third)
        with pytest.raises(OSError, match="No space"):
            publish(str(store.root), rid, results[1], config(1))
    assert writes == 3
    assert read_pointer(store, rid) == pointer and state(store) == old
    assert files_left(store, rid) == only_published(store, rid)
    publish(str(store.root), rid, results[1], config(1))
    new = state(store)
    assert new != old and new["heads"] == old["heads"]  # the controls differ, not Stage 2
    assert files_left(store, rid) == only_published(store, rid)


@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """A file that takes every free byte of ``folder``'s file system."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                continue
    return filler


def test_full_disk_keeps_previous_version_and_the_next_publish_completes(two_versions, tmpfs):
    source, rid, results = two_versions
    store = Store(tmpfs / "store")
    shutil.copytree(source.root, store.root)
    shutil.rmtree(store.root / "catalog", ignore_errors=True)
    old = state(Store(source.root))
    filler = fill(tmpfs)
    # No room for the store's snapshot: SQL builds a private one.
    assert state(store) == old and not list((store.root / "catalog").glob("*.duckdb"))
    with pytest.raises(OSError):
        publish(str(store.root), rid, results[1], config(1))
    assert state(store) == old
    filler.unlink()
    publish(str(store.root), rid, results[1], config(1))
    assert state(store) != old and files_left(store, rid) == only_published(store, rid)
    assert refresh_catalog(store.root) is not None


def test_sql_in_a_loop_while_publishing_sees_one_version_or_the_other(two_versions, tmp_path):
    store, rid, results = fresh_copy(two_versions, tmp_path)
    query = ("SELECT (SELECT config_json FROM runs), (SELECT sum(shuffle_frac_pos) FROM layers),"
             " (SELECT count(*) FROM heads), (SELECT count(*) FROM modes),"
             " (SELECT count(*) FROM images), (SELECT count(*) FROM runs)")
    seen: list = []
    errors: list = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(run_sql(str(store.root), query).to_pylist()[0])
            except Exception as err:  # noqa: BLE001 - any error fails the test below
                errors.append(err)

    versions = set()
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for k in range(6):
            seed = 1 - k % 2
            reads = len(seen)
            publish(str(store.root), rid, results[seed], config(seed))
            versions.add(tuple(run_sql(str(store.root), query).to_pylist()[0].values()))
            while len(seen) <= reads and not errors:  # the reader keeps pace with publishing
                time.sleep(0.01)
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[:3]
    assert len(versions) == 2 and len(seen) >= 6
    assert {tuple(row.values()) for row in seen} <= versions


def dump_results(store: Store, rid: str) -> xr.Dataset:
    return open_results(store, rid).load()


@pytest.mark.slow
def test_kill_9_while_publishing_then_rerun_equals_uninterrupted(two_versions, tmp_path,
                                                                 prefect_harness):
    """``bfd decompose --control-seed 1`` killed at random moments of its publish: SQL shows
    seed 0 or seed 1 whole, never a mix; a rerun equals an uninterrupted run bit for bit."""
    from bfd.flows.decompose import decompose

    store, rid, _ = fresh_copy(two_versions, tmp_path)
    old = state(store)
    reference = Store(tmp_path / "reference")
    shutil.copytree(store.root, reference.root)
    decompose(rid, store=str(reference.root), seed=1)
    new = state(reference)
    assert new != old

    argv = [sys.executable, "-m", "bfd.cli", "decompose", rid, "--store", str(store.root),
            "--control-seed", "1"]
    rng = random.Random(20261129)
    # Killed at a random moment shortly after each step of the publish has begun: its
    # results group, then its first, third and last (runs) table file, just before the switch.
    # The killed processes are forked from one that imported the command's modules
    # (tests/zygote.py: no interpreter start-up and imports each).
    with Zygote(zygote_env(), REPO) as zygote:
        for step in ("zarr", "layers", "heads", "runs"):
            before = files_left(store, rid)
            proc = zygote.start(argv[3:])  # bfd decompose ...
            try:
                while proc.poll() is None and not (
                        set(files_left(store, rid).get(step, [])) - set(before.get(step, []))):
                    time.sleep(0.001)
                time.sleep(rng.uniform(0.0, 0.02))
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.wait()
            assert state(store) in (old, new), f"killed after the {step} step began"
            # the published version's files hold the bytes its pointer records the sha256 of
            assert table_faults(store, rid) == [], step
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert state(store) == new
    xr.testing.assert_identical(dump_results(store, rid), dump_results(reference, rid))
    assert files_left(store, rid) == only_published(store, rid)
    assert table_faults(store, rid) == []


def test_concurrent_publishes_of_one_run_take_turns(two_versions, tmp_path):
    """Two decomposes of one run publishing at once (issue: `Directory not empty`): both
    finish, the last one's version is listed whole, and nothing else is left."""
    store, rid, results = fresh_copy(two_versions, tmp_path)
    old = state(store)
    errors: list = []

    def one(seed: int) -> None:
        try:
            publish(str(store.root), rid, results[seed], config(seed))
        except Exception as err:  # noqa: BLE001 - any error fails the test below
            errors.append(err)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in (1, 0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert files_left(store, rid) == only_published(store, rid)
    seed = json.loads(state(store)["runs"][0]["config_json"])["decompose"]["seed"]
    assert (state(store) == old) == (seed == 0)


def test_a_results_folder_without_metadata_is_removed_by_the_next_publish(two_versions,
                                                                          tmp_path):
    """A publish killed before its results group's metadata was written leaves a folder that
    Zarr does not list as a member; the next publish removes it all the same."""
    store, rid, results = fresh_copy(two_versions, tmp_path)
    orphan = Path(store.zarr_path) / rid / "results-killed"
    (orphan / "frac_pos" / "c").mkdir(parents=True)
    (orphan / "frac_pos" / "c" / "0").write_bytes(b"partial chunk")
    publish(str(store.root), rid, results[1], config(1))
    assert not orphan.exists()
    assert files_left(store, rid) == only_published(store, rid)


def test_a_first_publish_killed_before_its_switch_is_not_the_first_publication(two_versions,
                                                                               tmp_path):
    """A run whose first publish was killed before it switched the pointer (its results group
    and table files left, its runs file included) was not published then: the next publish
    is its first publication, and runs.created_at is that time, not the killed one's."""
    store, rid, results = fresh_copy(two_versions, tmp_path)
    store.published_pointer(rid).unlink()  # the run as before its first publish
    for table in RUN_TABLES:
        shutil.rmtree(store.tables_dir / table / rid)
    for group in results_groups(store, rid):
        remove_group(store, group)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    killed = Publication(store, rid, None)  # what the killed publish wrote, an hour ago
    killed.version = f"{an_hour_ago:%Y%m%dT%H%M%S%f}Z0badc0de"
    model = read_request(store, rid).model
    killed.write_results(results[0])
    killed.write_table("layers", model, layers_rows(results[0]))
    row = runs_row(store, rid, "complete", config(0))
    killed.write_table("runs", model, [{**row, "created_at": an_hour_ago}])
    started = datetime.now(UTC)
    publish(str(store.root), rid, results[0], config(0))
    (row,) = read_table(store, "runs").to_pylist()
    assert started <= row["created_at"] <= datetime.now(UTC)
    assert files_left(store, rid) == only_published(store, rid)
