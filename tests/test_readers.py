"""The store opened by other tools exactly as docs/layout.md shows (the code block of "Reading
the store from other tools" is run here), the stable catalog path, several stores in one
query, NULL for undefined values, and a catalog that degrades instead of dying."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from storebuilder import build_run, random_run_arrays

from bfd.queries import connect, current_catalog, run_sql
from bfd.storage import (
    AUDIT_SCHEMA,
    DRIFT_SCHEMA,
    RUN_TABLES,
    Store,
    open_activations,
    open_results,
    partition_value,
    read_audits,
    read_drift,
    read_pointer,
    write_audit,
    write_drift,
)
from bfd.tasks.decompose import DecomposeOptions, assemble_results, decompose_site_layer
from bfd.tasks.publish import publish

REPO = Path(__file__).resolve().parents[1]


def publish_run(store: Store, rid: str, layers: int, prefix: str = "exclude") -> None:
    options = DecomposeOptions(prefix=prefix)
    parts = [decompose_site_layer(str(store.root), rid, site, layer, options)
             for site in ("attn_in", "resid") for layer in range(layers)]
    results = assemble_results(parts, {"run_id": rid, **options.to_dict(),
                                       "images_per_task": 0})
    publish(str(store.root), rid, results, {"decompose": options.to_dict()})


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two runs of two models; only the first has a learned pos_embed (so pos_embed_cos is
    defined for one row of all)."""
    store = Store(tmp_path_factory.mktemp("readers") / "store")
    rids = []
    for k, (model, L, T) in enumerate((("toy_a", 2, 10), ("toy_b", 3, 7))):
        acts, qkv, H = random_run_arrays(k, L=L, N=8, T=T, d=12)
        pos = np.random.default_rng(k).normal(size=(T - 1, 12)) if k == 0 else None
        rid = build_run(store, acts, qkv, H, model=model, pos_embed=pos)
        publish_run(store, rid, L)
        rids.append(rid)
    return store, rids


def docs_snippet() -> str:
    text = (REPO / "docs" / "layout.md").read_text(encoding="utf-8")
    section = text[text.index("## Reading the store from other tools"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_snippet(store: Store, run_id: str, table: str) -> dict:
    code = docs_snippet()
    code = re.sub(r'^store = .*$', f"store = {str(store.root)!r}", code, count=1, flags=re.M)
    code = re.sub(r'^run_id = .*$', f"run_id = {run_id!r}", code, count=1, flags=re.M)
    code = code.replace("tables/heads", f"tables/{table}").replace('.get("heads")',
                                                                   f'.get("{table}")')
    assert f'.get("{table}")' in code
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # opening a run as documented warns about nothing
        exec(compile(code, "docs/layout.md", "exec"), scope)
    return scope


def kind(type_: pa.DataType) -> str:
    """A column type up to its Arrow encoding (string, large_string, string_view are one)."""
    if pa.types.is_string(type_) or pa.types.is_large_string(type_) or (
            pa.types.is_string_view(type_)):
        return "string"
    if pa.types.is_dictionary(type_):
        return kind(type_.value_type)
    if pa.types.is_timestamp(type_):  # one time zone under its names
        tz = "UTC" if type_.tz in ("UTC", "Etc/UTC", "+00:00") else type_.tz
        return f"timestamp[{type_.unit}, tz={tz}]"
    return str(type_)


def keys(table: pa.Table, columns: list[str]) -> list[tuple]:
    """The values of ``columns`` in each row of ``table``, sorted (NULL first)."""
    rows = [tuple(row[c] for c in columns) for row in table.select(columns).to_pylist()]
    return sorted(rows, key=lambda row: tuple((v is not None, v) for v in row))


def kinds(table: pa.Table) -> dict[str, str]:
    return {name: kind(table.schema.field(name).type) for name in table.column_names}


@pytest.mark.parametrize("table", RUN_TABLES)
def test_every_reader_gets_the_rows_and_types_of_bfd_sql(two_models, table):
    store, rids = two_models
    expected = run_sql(str(store.root), f"SELECT * FROM {table}")
    scope = run_snippet(store, rids[0], table)
    got = {
        "pandas": pa.Table.from_pandas(scope["heads_pandas"], preserve_index=False),
        "pyarrow.parquet": scope["heads_arrow"],
        "pyarrow.dataset": scope["heads_dataset"],
        "polars": scope["heads_polars"].to_arrow(),
        "duckdb": pa.Table.from_pandas(scope["heads_duckdb"], preserve_index=False),
    }
    assert len(set(expected.column("model").to_pylist())) == 2
    for reader, data in got.items():
        assert data.num_rows == expected.num_rows, reader
        assert data.column_names == expected.column_names, reader
        if reader in ("pandas", "duckdb"):
            # numpy-backed frames: an all-NULL column has no type left to compare
            data = data.select([c for c in data.column_names if data.column(c).null_count
                                < data.num_rows])
        assert kinds(data) == {c: kinds(expected)[c] for c in data.column_names}, reader
        key = [c for c in ("run_id", "site", "layer", "head", "mode", "image_index")
               if c in expected.column_names]
        assert keys(data, key) == keys(expected, key), reader
    published = run_snippet(store, rids[0], table)["heads_published"]
    assert len(published) == run_sql(
        str(store.root), f"SELECT count(*) AS n FROM {table} WHERE run_id = $r",
        {"r": rids[0]}).column("n")[0].as_py()


def test_xarray_opens_activations_and_results_without_warnings(two_models):
    store, rids = two_models
    scope = run_snippet(store, rids[1], "heads")
    assert scope["acts"].resid.dims == ("layer", "image", "token", "dim")
    assert scope["results"].energy.dims == ("layer", "head", "block")
    assert scope["pointer"] == read_pointer(store, rids[1])
    heads = run_sql(str(store.root), "SELECT count(*) AS n FROM heads WHERE run_id = $r",
                    {"r": rids[1]}).column("n")[0].as_py()
    assert scope["results"].energy.sizes["layer"] * scope["results"].energy.sizes["head"] == heads


def test_a_lazily_opened_version_removed_by_another_process_raises_not_nan(tmp_path):
    """A notebook's lazily opened results read all-NaN, silently, once another process
    published the run again (its version's group removed; Zarr's fill value is NaN), and
    its activations once they were dropped (trial 19). Now reading a value not read yet
    raises; what was loaded before stays; the run opened again reads the new version; and
    chunks merely not written (images not extracted yet) still read as NaN."""
    from bfd.storage import VersionRemovedError
    from bfd.storage.drop import drop_activations

    store = Store(tmp_path / "s")
    acts, qkv, heads = random_run_arrays(0, L=2, N=8, T=10, d=12)
    rid = build_run(store, acts, qkv, heads)
    publish_run(store, rid, 2)
    lazy, whole = open_results(store, rid), open_results(store, rid, dask=False)
    loaded = open_results(store, rid).load()
    activations = open_activations(store, rid)
    assert not np.isnan(activations.resid.isel(layer=0).values).any()
    before = loaded.frac_pos.values.copy()
    assert not np.isnan(before).all()

    publish_run(store, rid, 2, prefix="include")  # another process's `bfd decompose --prefix`
    for opened in (lazy, whole):
        with pytest.raises(VersionRemovedError, match="open it again"):
            opened.frac_pos.values  # noqa: B018 - the read is the test
    assert np.array_equal(loaded.frac_pos.values, before)
    again = open_results(store, rid)
    assert again.attrs["prefix"] == "include"
    assert not np.isnan(again.frac_pos.values).all()

    drop_activations(store, rid)  # another process's `bfd drop-activations`
    with pytest.raises(VersionRemovedError):
        activations.resid.isel(layer=1).values  # noqa: B018
    with pytest.raises(FileNotFoundError):  # the class a caller may catch already
        activations.attn_in.values  # noqa: B018

    # a run whose images are not all extracted: its missing chunks are NaN, as documented
    partial = build_run(Store(tmp_path / "p"), acts, qkv, heads, shards_done=1)
    got = open_activations(Store(tmp_path / "p"), partial).resid.values
    assert np.isnan(got).any() and not np.isnan(got).all()


def test_the_dashboard_reads_no_nan_of_a_version_removed_while_it_reads(tmp_path, monkeypatch):
    """The dashboard's positional components of a run published again by another process
    between opening its results and reading them: none (as when published again before),
    not components of NaN read as zeros; its strict read raises."""
    import bfd.storage
    from bfd.report.data import positional_components
    from bfd.storage import VersionRemovedError

    store = Store(tmp_path / "s")
    acts, qkv, heads = random_run_arrays(0, L=2, N=8, T=10, d=12)
    rid = build_run(store, acts, qkv, heads, grid=(3, 3))
    publish_run(store, rid, 2)
    assert positional_components(store.root, rid, (3, 3)) is not None
    real = bfd.storage.open_results_group

    def then_published_again(*args, **kwargs):
        opened = real(*args, **kwargs)
        publish_run(store, rid, 2, prefix="include")
        return opened

    monkeypatch.setattr(bfd.storage, "open_results_group", then_published_again)
    assert positional_components(store.root, rid, (3, 3)) is None
    with pytest.raises(VersionRemovedError):
        positional_components(store.root, rid, (3, 3), strict=True)


def test_strings_of_the_zarr_groups_read_as_the_docs_say(two_models):
    """Plain xarray gives numpy's StringDType, which ``.astype(str)`` refuses (a researcher's
    first cast); bfd's openers give fixed-width ``<U`` with the same values."""
    store, rids = two_models
    scope = run_snippet(store, rids[1], "heads")
    plain, acts = scope["results"], scope["acts"]
    assert plain.head_type.dtype.kind == "T"
    with pytest.raises(TypeError):
        plain.head_type.values.astype(str)
    results = open_results(store, rids[1])
    opened = open_activations(store, rids[1])
    for ours, theirs in ((results, plain), (opened, acts)):
        names = [k for k, v in theirs.variables.items() if v.dtype.kind == "T"]
        assert names and all(ours[k].dtype.kind == "U" for k in names), names
        for k in names:
            assert ours[k].values.astype(str).tolist() == theirs[k].values.astype(
                object).tolist(), k
    assert set(names) >= {"token_type", "image"}


def test_null_is_null(two_models):
    store, _ = two_models
    counts = run_sql(str(store.root), "SELECT count(*) AS rows, count(pos_embed_cos) AS cos,"
                     " count(logit_residual) AS logit, avg(pos_embed_cos) AS mean FROM layers")
    row = counts.to_pylist()[0]
    assert row["rows"] == 2 * (2 + 3)
    assert row["cos"] == 1  # resid layer 0 of the model with a learned pos_embed
    assert row["logit"] == 2 + 3  # attn_in only
    assert np.isfinite(row["mean"])


def test_stable_catalog_keeps_working_across_a_rebuild(two_models, tmp_path, capsys):
    source, rids = two_models
    store = Store(tmp_path / "store")
    shutil.copytree(source.root, store.root)
    path = current_catalog(store.root)
    assert path == store.root / "catalog" / "current.duckdb"
    tool = duckdb.connect(str(path), read_only=True)  # e.g. a BI tool
    before = tool.sql("SELECT count(*) FROM runs").fetchall()
    assert before == [(2,)]
    # A rebuild: the second run's files leave the catalog.
    (store.root / "runs" / rids[1] / "published.json").unlink()
    assert run_sql(str(store.root), "SELECT count(*) AS n FROM runs").column("n")[0].as_py() == 1
    assert tool.sql("SELECT count(*) FROM runs").fetchall() == before  # still its version
    assert tool.sql("SELECT count(*) FROM heads").fetchall()[0][0] > 0
    tool.close()
    fresh = duckdb.connect(str(current_catalog(store.root)), read_only=True)
    assert fresh.sql("SELECT count(*) FROM runs").fetchall() == [(1,)]
    fresh.close()
    from conftest import env_kept

    from bfd.cli import main

    capsys.readouterr()
    with env_kept():
        assert main(["catalog", "--path", "--store", str(store.root)]) == 0
    assert capsys.readouterr().out == f"{path}\n"


def test_attach_queries_several_stores_read_only(two_models, tmp_path):
    source, rids = two_models
    staging = Store(tmp_path / "staging")
    shutil.copytree(source.root, staging.root)
    (staging.root / "runs" / rids[0] / "published.json").unlink()
    con = connect(source.root, {"staging": staging.root})
    sql = ("SELECT (SELECT count(*) FROM runs) AS here, (SELECT count(*) FROM staging.runs) "
           "AS there, (SELECT count(*) FROM (SELECT run_id FROM heads EXCEPT "
           "SELECT run_id FROM staging.heads)) AS only_here")
    assert run_sql(con, sql).to_pylist() == [{"here": 2, "there": 1, "only_here": 1}]
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DELETE FROM staging.heads")
    with pytest.raises(ValueError, match="plain SQL name"):
        connect(source.root, {"bfd": staging.root})


def test_catalog_and_sql_import_no_torch_timm_or_prefect():
    code = ("import sys, bfd.queries; from bfd.queries import snapshot, listing; "
            "import bfd.storage.recorded, bfd.storage.unpublished; "
            "print(sorted(m for m in ('torch', 'timm', 'prefect', 'zarr', 'xarray') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("damage", ["truncated", "deleted", "garbage pointer"])
def test_unreadable_table_file_leaves_out_its_run_only(two_models, tmp_path, caplog, damage):
    source, rids = two_models
    store = Store(tmp_path / "store")
    shutil.copytree(source.root, store.root)
    damaged = store.root / read_pointer(store, rids[0])["tables"]["modes"]
    if damage == "truncated":
        damaged.write_bytes(damaged.read_bytes()[:50])
    elif damage == "deleted":
        damaged.unlink()
    else:
        damaged = store.published_pointer(rids[0])
        damaged.write_bytes(b"\x00garbage")
    for _ in range(2):  # built, then from the cache: the warning each time
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bfd.catalog"):
            runs = run_sql(str(store.root), "SELECT run_id FROM runs").column("run_id")
        assert runs.to_pylist() == [rids[1]]
        (message,) = [r.getMessage() for r in caplog.records]
        assert str(damaged) in message and rids[0] in message and "left out" in message
    for table in RUN_TABLES:
        got = run_sql(str(store.root), f"SELECT DISTINCT run_id FROM {table}")
        assert got.column("run_id").to_pylist() == [rids[1]], table


@pytest.mark.parametrize("recorded", ["", 123])
def test_verify_runs_and_the_catalog_check_a_recorded_sha256_by_one_rule(two_models, tmp_path,
                                                                          recorded):
    """A published file is changed when its sha256 is not what its pointer recorded: one rule
    (``bfd.storage.recorded``) for ``bfd verify`` (``table_faults``), ``bfd runs``
    (``unpublished_runs``) and the SQL catalog. A record that is no file's sha256 (a pointer
    edited by hand) matches no file for each of them; they disagreed: verify passed ``""``,
    the catalog passed a number."""
    from bfd.storage import table_faults, unpublished_runs

    source, rids = two_models
    store = Store(tmp_path / "store")
    shutil.copytree(source.root, store.root)
    path = store.published_pointer(rids[0])
    pointer = json.loads(path.read_text())
    pointer["sha256"]["heads"] = recorded
    path.write_text(json.dumps(pointer))
    heads = store.root / pointer["tables"]["heads"]
    st = heads.stat()  # the same bytes, another mtime: the catalog reads them (not a stat)
    os.utime(heads, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    digest = hashlib.sha256(heads.read_bytes()).hexdigest()
    assert [str(f) for f in table_faults(store, rids[0])] == [
        f"{heads}: changed since it was published (sha256 {digest[:12]}..., published.json "
        f"records {str(recorded)[:12]}...)"]
    assert table_faults(store, rids[1]) == []
    published = run_sql(str(store.root), "SELECT run_id FROM runs").column("run_id").to_pylist()
    assert published == [rids[1]]
    (damaged,) = unpublished_runs(store, published)
    assert (damaged.run_id, damaged.status) == (rids[0], "damaged")
    assert damaged.next.startswith(f"published, but {heads} changed after it was published")


SERIES = ("vit_b@/path/to/ckpts", "50% done", "a b", "_under", ".dot", "series=x")


def event_rows(k: int, series: str) -> tuple[dict, list[dict]]:
    """The audit and drift rows of audit ``k`` of ``series`` (two drift rows, one NULL)."""
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=k)
    audit_id = f"{at.strftime('%Y%m%dT%H%M%S')}-{k:08x}"
    audit = {"audit_id": audit_id, "series": series, "run_id": f"r{k}", "step": k,
             "started_at": at, "finished_at": at, "trigger": "manual", "status": "complete",
             "n_flagged": k % 2}
    drift = [{"audit_id": audit_id, "layer": 0, "head": h, "metric": "f_pp", "before": 0.5,
              "after": 0.5 + k / 10 if h is None else None, "delta": k / 10,
              "threshold": 0.05, "flagged": k % 2 == 1} for h in (None, 1)]
    return audit, drift


def readers(folder: Path) -> dict[str, pa.Table]:
    """Each usual reader's table of a folder of audit events."""
    files = f"{folder}/*/*.parquet"
    return {
        "pandas": pa.Table.from_pandas(pd.read_parquet(folder), preserve_index=False),
        "pyarrow.parquet": pq.read_table(folder),
        "pyarrow.dataset": ds.dataset(folder, format="parquet").to_table(),
        "polars": pl.scan_parquet(folder).collect().to_arrow(),
        "duckdb": duckdb.sql(f"SELECT * FROM read_parquet('{files}')").to_arrow_table(),
        "duckdb hive": duckdb.sql(
            f"SELECT * FROM read_parquet('{files}', hive_partitioning = true)").to_arrow_table(),
        "duckdb no hive": duckdb.sql(
            f"SELECT * FROM read_parquet('{files}', hive_partitioning = false)").to_arrow_table(),
    }


@pytest.mark.parametrize("table", ["audits", "drift"])
def test_every_reader_gets_each_series_of_the_event_tables(tmp_path, table):
    store = Store(tmp_path / "store")
    written: list[dict] = []
    for k, series in enumerate(SERIES * 2):
        audit, drift = event_rows(k, series)
        write_audit(store, audit)
        write_drift(store, series, audit["audit_id"], drift)
        written += [audit] if table == "audits" else [{**r, "series": series} for r in drift]
    expected = run_sql(str(store.root), f"SELECT * FROM {table}")
    key = ["audit_id", "series"] + (["head"] if table == "drift" else [])
    truth = keys(pa.Table.from_pylist(written), key)
    assert keys(expected, key) == truth
    for reader, data in readers(store.table_dir(table)).items():
        assert data.column_names == expected.column_names, reader
        assert keys(data, key) == truth, reader
        assert kind(data.schema.field("series").type) == "string", reader
    by_storage = (read_audits(store) if table == "audits"
                  else [r for s in SERIES for r in read_drift(store, s)])
    assert keys(pa.Table.from_pylist(by_storage), key) == truth


def test_a_store_of_the_old_hive_layout_still_reads(tmp_path):
    """Stores written before: series=<escaped series>/ folders, drift files without series."""
    store = Store(tmp_path / "store")
    old_drift = DRIFT_SCHEMA.remove(DRIFT_SCHEMA.get_field_index("series"))
    truth: list[dict] = []
    for k, series in enumerate(SERIES):
        audit, drift = event_rows(k, series)
        for table, rows, schema in (("audits", [audit], AUDIT_SCHEMA),
                                    ("drift", drift, old_drift)):
            folder = store.table_dir(table) / f"series={partition_value(series)}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=schema),
                           folder / f"{audit['audit_id']}.parquet")
        truth += [{**r, "series": series} for r in drift]
    # A new audit of an old series lands beside them, in this layout.
    audit, drift = event_rows(len(SERIES), SERIES[0])
    write_audit(store, audit)
    write_drift(store, SERIES[0], audit["audit_id"], drift)
    truth += [{**r, "series": SERIES[0]} for r in drift]
    key = ["audit_id", "series", "head"]
    expected = keys(pa.Table.from_pylist(truth), key)
    got = run_sql(str(store.root), "SELECT d.audit_id, d.series, d.head, a.series AS a_series"
                  " FROM drift AS d JOIN audits AS a USING (audit_id)")
    assert keys(got, key) == expected
    assert got.column("series").to_pylist() == got.column("a_series").to_pylist()
    stored = pa.Table.from_pylist([r for s in SERIES for r in read_drift(store, s)])
    assert keys(stored, key) == expected
    assert ([r["series"] for r in read_audits(store, SERIES[0])] == [SERIES[0]] * 2)


def test_duckdb_reads_runs_of_the_old_layout_beside_new_ones(two_models, tmp_path):
    """A store upgraded from a bfd before versioned publishing holds table files of both
    layouts (``model=<m>/run_id=<r>/part-0.parquet`` and ``<run_id>/part-<version>.parquet``),
    the old ones without the columns added since: the documented DuckDB call reads every run's
    rows, as ``bfd sql`` does (a glob one folder deep missed the old runs without a word)."""
    src, rids = two_models
    store = Store(tmp_path / "store")
    shutil.copytree(src.root, store.root)
    old = rids[1]
    pointer_path = store.root / "runs" / old / "published.json"
    pointer = json.loads(pointer_path.read_text())
    for table, name in pointer["tables"].items():
        rows = pq.read_table(store.root / name)
        rows = rows.drop_columns([c for c in rows.column_names if c.endswith("_adj")])
        folder = store.table_dir(table) / "model=toy_b" / f"run_id={old}"
        folder.mkdir(parents=True)
        pq.write_table(rows, folder / "part-0.parquet")
        (store.root / name).unlink()
    pointer_path.unlink()  # published as the old bfd did: no pointer
    for table in ("heads", "layers"):
        expected = run_sql(str(store.root), f"SELECT run_id, count(*) AS n FROM {table} "
                           "GROUP BY run_id ORDER BY run_id").to_pylist()
        assert {r["run_id"] for r in expected} == set(rids), table
        # the DuckDB call alone (pandas, pyarrow and polars refuse such a folder: the docs
        # say so)
        call = re.search(r"^heads_duckdb = duckdb\.sql\(\n.*?\n\)\.df\(\)$", docs_snippet(),
                         re.S | re.M).group(0).replace("tables/heads", f"tables/{table}")
        scope = {"duckdb": duckdb, "store": str(store.root)}
        exec(compile(call, "docs/layout.md", "exec"), scope)
        got = scope["heads_duckdb"].groupby("run_id").size().sort_index()
        assert [{"run_id": k, "n": int(v)} for k, v in got.items()] == expected, table


def test_every_reader_reads_the_columns_added_since_older_files_were_written(two_models,
                                                                             tmp_path):
    """Trial 29: on a store upgraded in place, the files written before a column was added
    lack it and are the first of their folder (audit files are named by time): polars' documented
    call refused the folder ("extra column in file outside of expected schema"), pandas and
    pyarrow read without the new columns. Each table folder's columns file, first of the
    folder, gives them every column; the older rows read NULL there."""
    store = Store(tmp_path / "store")
    shutil.copytree(two_models[0].root, store.root)
    new = ["frac_pos_adj_mean", "error"]  # two of the columns audits gained on 2026-12-04
    old = pa.schema([f for f in AUDIT_SCHEMA if f.name not in new])
    audit, _ = event_rows(0, "s")
    first = store.table_dir("audits") / "s" / f"{audit['audit_id']}.parquet"
    first.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{f.name: audit.get(f.name) for f in old}], old), first)
    # the runs table: one run's file as written before its last column was added
    runs_folder = store.table_dir("runs")
    for path in list(runs_folder.glob("*/*.parquet")) + list(runs_folder.glob("!*")):
        path.unlink()
    rid = two_models[1][0]
    publish_run(store, rid, 2)  # publishes the first run again: its runs file and the columns file
    narrow = runs_folder / "old-run" / "part-0.parquet"
    narrow.parent.mkdir(parents=True)
    full = pq.read_table(next(runs_folder.glob(f"{rid}/*.parquet")))
    last = full.column_names[-1]
    pq.write_table(full.drop_columns([last]).set_column(0, "run_id", pa.array(["old-run"])),
                   narrow)
    later, _ = event_rows(1, "s")
    write_audit(store, later | {"frac_pos_adj_mean": 0.25, "error": None})

    for table, want, column in (("audits", {audit["audit_id"]: None, later["audit_id"]: 0.25},
                                 "frac_pos_adj_mean"),
                                ("runs", {"old-run": None, rid: full.column(last)[0].as_py()},
                                 last)):
        folder = store.table_dir(table)
        key = "audit_id" if table == "audits" else "run_id"
        got = {
            "pandas": pa.Table.from_pandas(pd.read_parquet(folder), preserve_index=False),
            "pyarrow.parquet": pq.read_table(folder),
            "pyarrow.dataset": ds.dataset(folder, format="parquet").to_table(),
            "polars": pl.scan_parquet(folder, missing_columns="insert").collect().to_arrow(),
        }
        for reader, data in got.items():
            rows = {r[key]: r[column] for r in data.select([key, column]).to_pylist()}
            if reader == "pandas":  # numpy-backed: NULL reads NaN
                rows = {k: None if isinstance(v, float) and np.isnan(v) else v
                        for k, v in rows.items()}
            assert rows == want, (table, reader)
    # the drift table of audits none of which compared: its columns, no rows
    drift = store.table_dir("drift")
    assert pd.read_parquet(drift).columns.tolist() == DRIFT_SCHEMA.names
    assert pl.scan_parquet(drift, missing_columns="insert").collect().shape == (
        0, len(DRIFT_SCHEMA))
    # bfd's own readers: the columns file is no audit, no run and no row
    assert [a["audit_id"] for a in read_audits(store, "s")] == [audit["audit_id"],
                                                              later["audit_id"]]
    assert run_sql(str(store.root), "SELECT count(*) AS n FROM audits").column("n")[0].as_py() == 2


def test_bfd_reads_a_series_events_as_written_after_every_change(tmp_path):
    """bfd's own reader of the event tables (read_audits, read_drift) keeps the files it has
    read (trial 32: a reused audit read its series three times, 3.1 of its 6.8 s at 360
    audits): each read still equals the files: an audit added, a file replaced, a file of an
    earlier bfd without the newer columns (NULL), an old drift file whose series is its
    folder's."""
    from bfd.storage import read_audits, read_drift
    from bfd.storage.audits import EVENT_TABLES

    store = Store(tmp_path / "store")
    rows = []
    for k in range(3):
        audit, drift = event_rows(k, "s")
        write_audit(store, audit)
        write_drift(store, "s", audit["audit_id"], drift)
        rows.append(audit)

    def ids_and_runs() -> list[tuple[str, str]]:
        return [(r["audit_id"], r["run_id"]) for r in read_audits(store, "s")]

    assert ids_and_runs() == [(r["audit_id"], r["run_id"]) for r in rows]
    audit, drift = event_rows(3, "s")
    write_audit(store, audit)
    rows.append(audit)
    assert ids_and_runs() == [(r["audit_id"], r["run_id"]) for r in rows]
    # one file replaced by another (a new inode): read again, not the kept table
    path = store.table_dir("audits") / "s" / f"{rows[1]['audit_id']}.parquet"
    replaced = pq.read_table(path).set_column(2, "run_id", pa.array(["other"]))
    pq.write_table(replaced, path.with_name("x.tmp"))
    os.replace(path.with_name("x.tmp"), path)
    assert ids_and_runs()[1] == (rows[1]["audit_id"], "other")
    # a file of an earlier bfd: fewer columns, NULL in the newer ones
    schema = EVENT_TABLES["audits"]
    old, _ = event_rows(4, "s")
    narrow = pa.schema([f for f in schema if f.name not in ("error", "f_cc_adj")])
    pq.write_table(pa.Table.from_pylist([{f.name: old.get(f.name) for f in narrow}], narrow),
                   store.table_dir("audits") / "s" / f"{old['audit_id']}.parquet")
    (last,) = [r for r in read_audits(store, "s") if r["audit_id"] == old["audit_id"]]
    assert last["run_id"] == "r4" and last["error"] is None and last["f_cc_adj"] is None
    assert list(last) == schema.names
    # an old drift file (Hive folder, no series column): its series from the folder
    hive = store.table_dir("drift") / "series=s" / "old.parquet"
    hive.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([{"audit_id": "old", "layer": 0, "metric": "f_pp"}]),
                   hive)
    (kept,) = read_drift(store, "s", "old")
    assert kept["series"] == "s" and kept["head"] is None
    assert len(read_drift(store, "s")) == 3 * 2 + 1
