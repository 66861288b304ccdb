"""The events' cache (bfd.storage.audits; docs/layout.md, "Audit events"): a long series' audit
and drift rows, read through it by ``read_audits``, ``read_drift`` and the SQL catalog, equal the
rows of its files read one by one, whatever happened to the files after the cache was written:
an audit deleted by hand, a file rewritten, a new audit, a damaged cache or file."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bfd.queries import connect
from bfd.storage import DamagedStoreError, Store, read_audits, read_drift, write_audit, write_drift
from bfd.storage import audits as events
from bfd.storage.audits import CACHE_REFRESH_AT, cache_path, series_folder

SERIES = "vit@nightly"
START = datetime(2026, 1, 1, 3, tzinfo=UTC)


def _audit(store: Store, k: int) -> str:
    """Audit k of the series, its drift (3 rows) written first, as an audit writes them."""
    audit_id = f"2026{k:04d}-a{k:03d}"
    began = START + timedelta(days=k)
    prev = f"2026{k - 1:04d}-a{k - 1:03d}" if k else None
    write_drift(store, SERIES, audit_id, [
        {"audit_id": audit_id, "prev_audit_id": prev, "layer": layer, "head": None,
         "metric": "frac_pos", "before": 0.1 * layer, "after": 0.1 * layer + k / 1000,
         "delta": k / 1000, "threshold": 0.05, "flagged": k % 7 == 0, "comparable": True}
        for layer in range(3)])
    write_audit(store, {
        "audit_id": audit_id, "series": SERIES, "run_id": f"run-{k % 3}", "step": k,
        "started_at": began, "finished_at": began + timedelta(minutes=2), "trigger": "schedule",
        "status": "complete", "prev_audit_id": prev, "n_flagged": int(k % 7 == 0),
        "f_cc": k / 100})
    return audit_id


def _folder(store: Store, table: str) -> Path:
    return store.table_dir(table) / series_folder(SERIES)


def _files_rows(store: Store, table: str) -> list[str]:
    """Brute force: every file of the series' folder read by itself, its rows as JSON."""
    rows = [r for p in sorted(_folder(store, table).glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()]
    return _canon(rows)


def _canon(rows: list[dict]) -> list[str]:
    return sorted(json.dumps(r, default=str, sort_keys=True) for r in rows)


def _fresh_process() -> None:
    """Forget what this process read (a new process reads the cache and files again)."""
    events._EVENTS_READ.clear()
    events._CACHES_READ.clear()


def _check_all_readers(store: Store) -> None:
    _fresh_process()
    assert _canon(read_audits(store, SERIES)) == _files_rows(store, "audits")
    assert _canon(read_drift(store, SERIES)) == _files_rows(store, "drift")
    audits = {r["audit_id"]: r for p in _folder(store, "audits").glob("*.parquet")
              for r in pq.read_table(p).to_pylist()}
    with connect(store) as con:
        got = con.execute("SELECT audit_id, step, f_cc FROM audits ORDER BY audit_id").fetchall()
        drift = con.execute("SELECT audit_id, layer, after FROM drift ORDER BY 1, 2").fetchall()
    assert got == [(a, r["step"], r["f_cc"]) for a, r in sorted(audits.items())]
    # the catalog keeps the drift rows of recorded audits (snapshot fills)
    assert drift == sorted((r["audit_id"], r["layer"], r["after"])
                           for p in _folder(store, "drift").glob("*.parquet")
                           for r in pq.read_table(p).to_pylist() if r["audit_id"] in audits)


def _covers(store: Store, table: str) -> dict:
    meta = pq.read_schema(cache_path(_folder(store, table))).metadata
    return json.loads(meta[b"bfd.event_files"])["files"]


@pytest.fixture
def series(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store")
    for k in range(CACHE_REFRESH_AT + 3):
        _audit(store, k)
    return store


def test_a_long_series_is_cached_and_read_as_its_files(series: Store) -> None:
    store = series
    for table in ("audits", "drift"):
        path = cache_path(_folder(store, table))
        assert path == store.root / "cache" / "events" / table / f"{series_folder(SERIES)}.parquet"
        # written once CACHE_REFRESH_AT files were not in it (none before: no cache)
        assert len(_covers(store, table)) == CACHE_REFRESH_AT
    _check_all_readers(store)
    # the cache is what is read for the files it holds: a file it holds, rewritten with its
    # size and mtime kept, still reads as the cache holds it
    victim = _folder(store, "audits") / "20260005-a005.parquet"
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    _fresh_process()
    assert [r["step"] for r in read_audits(store, SERIES)] == list(range(CACHE_REFRESH_AT + 3))


def test_files_changed_after_the_cache(series: Store) -> None:
    store = series
    before = {t: cache_path(_folder(store, t)).read_bytes() for t in ("audits", "drift")}
    # an audit deleted by hand (its two files), one file rewritten by hand, a new audit
    for table in ("audits", "drift"):
        (_folder(store, table) / "20260003-a003.parquet").unlink()
    edited = _folder(store, "audits") / "20260010-a010.parquet"
    table = pq.read_table(edited)
    pq.write_table(table.set_column(table.schema.get_field_index("f_cc"), "f_cc",
                                    [[123.0]]), edited)
    os.utime(edited, ns=(0, edited.stat().st_mtime_ns + 10**9))
    _check_all_readers(store)  # the cache still names the deleted and the edited file
    assert {t: cache_path(_folder(store, t)).read_bytes() for t in before} == before
    new = _audit(store, CACHE_REFRESH_AT + 3)
    _check_all_readers(store)
    audits = {r["audit_id"]: r for r in read_audits(store, SERIES)}
    assert "20260003-a003" not in audits and new in audits
    assert audits["20260010-a010"]["f_cc"] == 123.0
    # the cache that named the deleted file was written again, without it
    for t in ("audits", "drift"):
        assert cache_path(_folder(store, t)).read_bytes() != before[t]
        assert "20260003-a003.parquet" not in _covers(store, t)


def test_a_damaged_cache_is_not_read_and_is_written_again(series: Store) -> None:
    store = series
    path = cache_path(_folder(store, "audits"))
    path.write_bytes(b"not parquet")
    _check_all_readers(store)
    _audit(store, CACHE_REFRESH_AT + 3)  # every file out of the cache: written again
    assert len(_covers(store, "audits")) == CACHE_REFRESH_AT + 4
    _check_all_readers(store)


def test_a_damaged_file_is_said_as_without_a_cache(series: Store, caplog) -> None:
    store = series
    victim = _folder(store, "audits") / "20260007-a007.parquet"
    victim.write_bytes(victim.read_bytes()[:-20])  # truncated: its size changed
    _fresh_process()
    with pytest.raises(DamagedStoreError, match="20260007-a007.parquet is damaged"):
        read_audits(store, SERIES)
    with connect(store) as con:
        ids = [r[0] for r in con.execute("SELECT audit_id FROM audits").fetchall()]
    assert len(ids) == CACHE_REFRESH_AT + 2 and "20260007-a007" not in ids
    assert any(f"audit event file {victim} cannot be read" in r.getMessage()
               for r in caplog.records)
