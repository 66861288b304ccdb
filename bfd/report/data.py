"""What the dashboard and ``bfd plot`` show, read from a store's catalog with SQL (bfd.queries).

Everything here goes through ``bfd.queries.run_sql`` on one open catalog connection, so the
pages see one snapshot of the tables. The one exception is the positional factor ``pos`` of a
run, which no table holds: it is read from the run's results Dataset (``bfd.storage``).

A *series* is what one audit schedule follows over time: the ``series`` column of the
``audits`` table, whose rows each put a run into a series at a step (a run audited in several
series is in each); a run never audited is in its ``model · weights`` series. Tables are
returned column-wise (``{column: [values]}``), NULL and NaN as ``None``, timestamps as ISO 8601
strings: the form the pages embed as JSON.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from typing import Any, Final, TypeAlias

import duckdb
import numpy as np
import pyarrow as pa

from bfd.queries import run_query, run_sql
from bfd.storage import SEEN_FIGURES
from bfd.storage.unpublished import activations_sql

__all__ = [
    "DRIFT_OF_PLOT",
    "Columns",
    "audits_present",
    "catalog_tables",
    "columnar",
    "compare_choices",
    "drift_marks",
    "figures_not_kept",
    "head_figures",
    "latest_series",
    "layer_rows",
    "left_out_rows",
    "positional_components",
    "run_detail",
    "run_keys",
    "run_list",
    "run_shapes",
    "safe_file_stem",
    "series_data",
    "series_list",
]

Columns: TypeAlias = dict[str, list[Any]]

# Tables whose rows belong to one run; a run's page is rebuilt when any of its rows change.
_RUN_TABLES: Final[tuple[str, ...]] = ("runs", "layers", "heads", "modes", "audits")
_RUN_SERIES: Final[str] = "r.model || coalesce(' · ' || r.weights, '')"
_SERIES: Final[str] = f"coalesce(a.series, {_RUN_SERIES})"
# The latest audit of each run, for the run list and the run pages (one row per run). A run
# may be audited many times, in several series: the Series page and the overview's series
# list take every audit (series_data, series_list), not this one.
_LATEST_AUDIT: Final[str] = (
    "(SELECT * FROM audits QUALIFY row_number() OVER (PARTITION BY run_id "
    "ORDER BY finished_at DESC NULLS LAST, audit_id DESC) = 1)"
)
# The run_summary columns of the run itself (its identity, its images), not of a decomposition:
# the same for every audit of the run.
_RUN_IDENTITY: Final[tuple[str, ...]] = ("model", "run_id", "weights", "created_at", "n_images",
                                         "n_decoded")
_NO_AUDIT: Final[str] = (
    "(SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS series, NULL::VARCHAR AS audit_id,"
    " NULL::BIGINT AS step, NULL::TIMESTAMPTZ AS started_at, NULL::TIMESTAMPTZ AS finished_at,"
    " NULL::VARCHAR AS trigger, NULL::VARCHAR AS flow_run_id, NULL::VARCHAR AS status,"
    " NULL::BIGINT AS n_flagged, NULL::VARCHAR AS drift_note, NULL::VARCHAR AS prev_audit_id"
    " WHERE false)"
)


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        # an instant in UTC: the pages show its first 16 characters as UTC wall time (in
        # the builder's zone it read hours off the steps' times beside it: trial 31)
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, int) and abs(value) > 2**53:
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def columnar(table: pa.Table) -> Columns:
    """A table as ``{column: [values]}`` that ``json.dumps`` accepts (no NaN, no datetimes)."""
    return {
        name: [_json_value(v) for v in table.column(name).to_pylist()]
        for name in table.column_names
    }


def catalog_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names of the tables and views of the catalog."""
    names = run_sql(con, "SELECT table_name FROM information_schema.tables")
    return set(names.column("table_name").to_pylist())


def audits_present(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the catalog has an ``audits`` table with at least one row."""
    if "audits" not in catalog_tables(con):
        return False
    return run_sql(con, "SELECT count(*) AS n FROM audits").column("n")[0].as_py() > 0


def _column_names(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return run_sql(con, f"DESCRIBE {table}").column("column_name").to_pylist()


def _audit_source(con: duckdb.DuckDBPyConnection) -> str:
    return _LATEST_AUDIT if audits_present(con) else _NO_AUDIT


def _drift_note(con: duckdb.DuckDBPyConnection, alias: str) -> str:
    """SQL of an audit's ``drift_note`` (why its drift check compared nothing: its n_flagged
    of 0 is no pass), NULL where the audits table has none."""
    return _audit_column(con, alias, "drift_note")


def _audit_column(con: duckdb.DuckDBPyConnection, alias: str, name: str) -> str:
    """SQL of an audits column (VARCHAR) of ``alias``, NULL where the audits table has none."""
    has = audits_present(con) and name in _column_names(con, "audits")
    return f"{alias}.{name}" if has else "NULL::VARCHAR"


# The head counts of the overview's tables (run_summary's n_heads, n_heads_pp, ...: heads by
# head_type; no head is pc, a type the counts do not have).
HEAD_COUNTS: Final[tuple[str, ...]] = ("n_heads", "n_heads_pp", "n_heads_cp", "n_heads_cc",
                                       "n_heads_undefined")
_HEAD_COUNTS_OF_RUN: Final[str] = ", ".join(f"rs.{name}" for name in HEAD_COUNTS)


def run_list(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Every run of the store with its series, identity (its decompose ``prefix`` option:
    ``run_shapes``'; its ``prefix_tokens``; its ``activations``, stored or not, as ``bfd runs``
    says them) and latest audit (its ``drift_note`` and ``prev_audit_id`` too: an audit naming
    none, with no drift_note, is the first of its series, nothing compared), oldest first;
    last, its head counts by type (``HEAD_COUNTS``: ``run_summary``'s, its current results)."""
    sql = f"""
        SELECT r.run_id, {_SERIES} AS series, r.model, r.weights, r.weights_sha256, r.images,
            r.images_sha256,
            (SELECT sh.prefix FROM run_shapes AS sh WHERE sh.run_id = r.run_id) AS prefix,
            {activations_sql("r.config_json")} AS activations, r.n_images, r.n_skipped,
            r.n_images - coalesce(r.n_skipped, 0) AS n_decoded, r.grid_h, r.grid_w,
            r.prefix_tokens, r.created_at,
            r.status, r.depth, r.num_heads,
            a.audit_id, a.step, a.started_at, a.finished_at, a.trigger, a.flow_run_id,
            a.status AS audit_status, a.n_flagged, {_drift_note(con, "a")} AS drift_note,
            {_audit_column(con, "a", "prev_audit_id")} AS prev_audit_id,
            {_HEAD_COUNTS_OF_RUN}
        FROM runs AS r
        LEFT JOIN {_audit_source(con)} AS a USING (run_id)
        LEFT JOIN run_summary AS rs ON rs.run_id = r.run_id
        ORDER BY series, coalesce(a.step, 0), r.created_at, r.run_id
    """
    return run_sql(con, sql)


def layer_rows(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> pa.Table:
    """Per layer of every complete run (or of one): ``layer_summary`` beside the ``layers``
    columns of the attn_in site, interval columns (``*_lo``, ``*_hi``) included where the
    tables carry them; ``pos_embed_cos_resid`` from the resid site."""
    where = "" if run_id is None else "WHERE s.run_id = $run_id"
    summary = set(_column_names(con, "layer_summary"))
    # Columns of `layers` that layer_summary lacks (a later column of the same name as one of
    # the summary's would otherwise come out twice).
    extra = [
        name
        for name in _column_names(con, "layers")
        if name not in summary and name not in ("run_id", "model", "layer", "site")
    ]
    picked = "".join(f', l."{name}"' for name in extra)
    sql = f"""
        SELECT s.*{picked}, lr.pos_embed_cos AS pos_embed_cos_resid
        FROM layer_summary AS s
        LEFT JOIN layers AS l ON l.run_id = s.run_id AND l.layer = s.layer
            AND l.site = 'attn_in'
        LEFT JOIN layers AS lr ON lr.run_id = s.run_id AND lr.layer = s.layer
            AND lr.site = 'resid'
        {where}
        ORDER BY s.run_id, s.layer
    """
    return run_sql(con, sql, None if run_id is None else {"run_id": run_id})


def run_shapes(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The ``run_shapes`` row of every complete run (what ``run_pairs`` compares of it), by
    run id: the pages that show a pair's ``same_model`` or note derive it from the two runs'
    rows (dashboard.js ``pairOf``), so they embed one row a run, not one a pair of runs."""
    return run_sql(con, """
        SELECT run_id, model, architecture, depth, num_heads, width, prefix, shape,
            images_sha256, images, img_size, method
        FROM run_shapes
        ORDER BY run_id
    """)


def run_keys(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """A key per run that changes whenever any of its rows in any per-run table changes
    (an order-independent sum of row hashes and a row count per table)."""
    present = catalog_tables(con)
    parts = [
        f"SELECT run_id, '{table}' AS tab, count(*) AS n, CAST(sum(hash(t)) AS VARCHAR) AS h "
        f"FROM {table} AS t GROUP BY run_id"
        for table in _RUN_TABLES
        if table in present
    ]
    rows = run_sql(con, " UNION ALL ".join(parts) + " ORDER BY run_id, tab").to_pylist()
    keys: dict[str, Any] = {}
    for row in rows:
        if row["run_id"] is None:
            continue
        digest = keys.setdefault(row["run_id"], hashlib.sha256())
        digest.update(f"{row['tab']}:{row['n']}:{row['h']};".encode())
    return {run_id: digest.hexdigest()[:24] for run_id, digest in keys.items()}


def run_audits(con: duckdb.DuckDBPyConnection) -> dict[str, Columns]:
    """Every audit of each run, by run (``columnar``), the first started first, in whatever
    series: its id, series, step, start, status, flags and drift note, and the audit it was
    compared with. A run that a rollback or an unchanged checkpoint reused is audited at
    several steps; its page lists them all (its ``runs`` row names its latest only)."""
    if not audits_present(con):
        return {}
    rows = run_sql(con, "SELECT run_id, audit_id, series, step, started_at, status, n_flagged,"
                   f" {_drift_note(con, 'audits')} AS drift_note,"
                   f" {_audit_column(con, 'audits', 'prev_audit_id')} AS prev_audit_id"
                   " FROM audits WHERE run_id IS NOT NULL ORDER BY run_id, started_at, audit_id")
    by_run: dict[str, Columns] = {}
    names = [n for n in rows.column_names if n != "run_id"]
    for row in rows.to_pylist():
        mine = by_run.setdefault(row["run_id"], {n: [] for n in names})
        for n in names:
            mine[n].append(_json_value(row[n]))
    return by_run


def run_detail(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, pa.Table]:
    """The heads and modes of one run, and its layers (as ``layer_rows``)."""
    params = {"run_id": run_id}
    heads = run_sql(
        con, "SELECT * EXCLUDE (model) FROM heads WHERE run_id = $run_id ORDER BY layer, head",
        params,
    )
    modes = run_sql(
        con,
        "SELECT layer, head, mode, sigma, alpha, beta, e_pp, e_pc, e_cp, e_cc, mode_type "
        "FROM modes WHERE run_id = $run_id ORDER BY layer, head, mode",
        params,
    )
    return {"layers": layer_rows(con, run_id), "heads": heads, "modes": modes}


# The drift metrics (bfd.tasks.drift: a layer share at attn_in, ``_resid`` at resid; a head
# share; ``head_type``) whose flagged rows mark each Series plot: a plot is marked only for the
# metrics it shows (frac_pos_mean is the mean of frac_pos at attn_in, never frac_pos_resid);
# a head_type row marks only the counts of the types its head changed from and to
# (``drift_marks``).
DRIFT_OF_PLOT: Final[dict[str, tuple[str, ...]]] = {
    "frac_pos_mean": ("frac_pos",),
    "frac_pos_resid_mean": ("frac_pos_resid",),
    **{f"{kind}f_{b}": (f"f_{b}",) for kind in ("", "mean_") for b in ("pp", "pc", "cp", "cc")},
    **{f"n_heads_{t}": ("head_type",) for t in ("pp", "cp", "cc", "undefined")},
}
# The count plot of each head type (a type not listed: ``undefined``). A flagged head_type
# row marks only the count plots of the types its head changed from and to (its row of
# ``head_type_changes``); one whose change is not listed (run_pairs has a note for the two
# runs) marks ``n_heads`` alone, its types unknown.
_TYPE_PLOT: Final[dict[str, str]] = {
    "position-position": "n_heads_pp", "content-position": "n_heads_cp",
    "content-content": "n_heads_cc"}


def drift_marks(drift: pa.Table, changes: pa.Table) -> pa.Table:
    """One row per (series, audit, plot) that the audit's flagged ``drift`` rows mark: the
    plots of ``DRIFT_OF_PLOT`` showing the metric, a ``head_type`` row only the count plots of
    the types its head changed from and to (``_TYPE_PLOT``; ``n_heads`` where the change is
    not in ``changes``). ``metrics`` (sorted), ``n_rows``, ``layers`` (sorted) and
    ``max_abs_delta`` (NULL where no row has a delta) say what was flagged; ``heads`` the
    heads of its rows of one head (``layer.head``, by layer then head) and ``largest`` the row
    of the largest |delta| (``f_cc of layer 4 head 1``), so that a flag's hover says which
    head changed; ``types`` the head-type changes (``before -> after: count``, sorted) of a
    head-count plot's mark."""
    plots: dict[str, list[str]] = {}
    for plot, metrics in DRIFT_OF_PLOT.items():
        for metric in metrics:
            if metric != "head_type":
                plots.setdefault(metric, []).append(plot)
    types = {(c["series"], c["audit_id"], c["layer"], c["head"]): (c["before"], c["after"])
             for c in changes.to_pylist()}
    marks: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in drift.to_pylist():
        key = (row["series"], row["audit_id"], row["layer"], row["head"])
        change = types.get(key) if row["metric"] == "head_type" else None
        if row["metric"] != "head_type":
            to = plots.get(row["metric"], [])
        elif change is None:
            to = ["n_heads"]
        else:
            to = list(dict.fromkeys(_TYPE_PLOT.get(t or "", "n_heads_undefined") for t in change))
        for plot in to:
            m = marks.setdefault((row["series"], row["audit_id"], plot), {
                "series": row["series"], "audit_id": row["audit_id"], "plot": plot,
                "metrics": set(), "n_rows": 0, "layers": set(), "max_abs_delta": None,
                "heads": set(), "largest": None, "types": {}})
            m["metrics"].add(row["metric"])
            m["n_rows"] += 1
            if row["layer"] is not None:
                m["layers"].add(row["layer"])
                if row["head"] is not None:
                    m["heads"].add((row["layer"], row["head"]))
            where = (f"{row['metric']}" + ("" if row["layer"] is None else
                                          f" of layer {row['layer']}") +
                     ("" if row["head"] is None else f" head {row['head']}"))
            if row["delta"] is not None and math.isfinite(row["delta"]):
                if m["max_abs_delta"] is None or abs(row["delta"]) > m["max_abs_delta"]:
                    m["largest"] = where
                m["max_abs_delta"] = max(abs(row["delta"]), m["max_abs_delta"] or 0.0)
            elif m["largest"] is None and m["max_abs_delta"] is None:
                m["largest"] = where  # no row with a delta yet: the first one
            if change is not None:
                arrow = f"{change[0]} -> {change[1]}"
                m["types"][arrow] = m["types"].get(arrow, 0) + 1
    rows = [{**m, "metrics": sorted(m["metrics"]), "layers": sorted(m["layers"]),
             "heads": [f"{layer}.{head}" for layer, head in sorted(m["heads"])],
             "types": [f"{t}: {n}" for t, n in sorted(m["types"].items())]}
            for m in marks.values()]
    return pa.Table.from_pylist(rows, pa.schema([
        ("series", pa.string()), ("audit_id", pa.string()), ("plot", pa.string()),
        ("metrics", pa.list_(pa.string())), ("n_rows", pa.int64()),
        ("layers", pa.list_(pa.int64())), ("max_abs_delta", pa.float64()),
        ("heads", pa.list_(pa.string())), ("largest", pa.string()),
        ("types", pa.list_(pa.string()))]))


# The decompose options that change a run's figures (bfd.storage.republish.RESULT_FLAGS):
# an audit saw its run's results decomposed with those of its ``decompose_json``.
_RESULT_OPTIONS: Final[tuple[str, ...]] = ("prefix", "seed", "compute_dtype",
                                           "jackknife_groups", "ci_target")


def _redecomposed_sql() -> str:
    """SQL, over ``audits AS a`` joined with ``runs AS r``: whether the run's current results
    were decomposed with other options that change figures than the audit saw (a later
    ``bfd decompose --prefix include`` of it, or an audit of it with other options): its
    current layer rows and head types are then not the audit's. False where either side
    does not say."""
    differ = " OR ".join(
        f"json_extract_string(a.decompose_json, '$.{k}') IS DISTINCT FROM "
        f"json_extract_string(r.config_json, '$.decompose.{k}')" for k in _RESULT_OPTIONS)
    return (f"coalesce(a.decompose_json IS NOT NULL AND "
            f"json_extract(r.config_json, '$.decompose') IS NOT NULL AND ({differ}), false)")


def _kept_changes_sql(con: duckdb.DuckDBPyConnection) -> str:
    """SQL of two CTEs (``, typed AS (...), kept AS (...)``, after the CTE ``p`` of
    ``_series_points``): ``typed``,
    the audits whose drift rows name the head types they compared (drift written before it
    kept them does not); ``kept``, the heads whose type those rows say changed, per complete
    audit (series, audit ids, run, layer, head, before, after): an audit's own record, which
    a later decomposition of its runs does not change."""
    if ("drift" not in catalog_tables(con) or not audits_present(con)
            or "type_before" not in _column_names(con, "drift")):
        return (", typed AS (SELECT NULL::VARCHAR AS audit_id WHERE false),"
                " kept AS (SELECT NULL::VARCHAR AS series, NULL::VARCHAR AS prev_audit_id,"
                " NULL::VARCHAR AS audit_id, NULL::VARCHAR AS run_id, NULL::INTEGER AS layer,"
                " NULL::INTEGER AS head, NULL::VARCHAR AS before, NULL::VARCHAR AS after"
                " WHERE false)")
    return """,
        typed AS (
            SELECT DISTINCT d.audit_id FROM drift AS d
            WHERE d.metric = 'head_type' AND d.type_before IS NOT NULL
        ),
        kept AS (
            SELECT a.series, d.prev_audit_id, d.audit_id, a.run_id, d.layer, d.head,
                d.type_before AS before, d.type_after AS after
            FROM drift AS d
            JOIN p AS a ON a.audit_id = d.audit_id
            WHERE d.metric = 'head_type' AND d.type_before IS NOT NULL
                AND d.type_before IS DISTINCT FROM d.type_after
        )"""


def _series_points(con: duckdb.DuckDBPyConnection) -> str:
    """SQL of the points of every series: one per complete audit of a complete run (its
    series, step, the audit it was compared with (``prev_audit_id``) and the figures it saw,
    as ``audit_history``), and one per run never audited
    (series ``model · weights``, no step). As ``audit_history``, an audit of a run the catalog
    left out (a damaged table file or pointer: not in ``runs``) is a point too, its
    ``left_out`` true: the figures it kept, its run's columns unknown. ``redecomposed``: the
    audit's run was decomposed since with other options that change figures
    (``_redecomposed_sql``)."""
    seen = [name for name, _ in SEEN_FIGURES]
    unaudited = (
        f"SELECT r.run_id, {_RUN_SERIES} AS series, NULL::VARCHAR AS audit_id,"
        " NULL::BIGINT AS step, NULL::TIMESTAMPTZ AS started_at, NULL::TIMESTAMPTZ AS finished_at,"
        " NULL::BIGINT AS n_flagged, NULL::VARCHAR AS prev_audit_id, false AS kept,"
        " false AS left_out, false AS redecomposed"
        + "".join(f", NULL AS seen_{name}" for name in seen)
        + " FROM runs AS r"
    )
    if not audits_present(con):
        return unaudited
    unaudited += " WHERE r.run_id NOT IN (SELECT run_id FROM audits WHERE run_id IS NOT NULL)"
    kept = set(_column_names(con, "audits"))
    # audits keep the figures they saw (an old audit's filled from run_summary by the catalog;
    # an audits table without those columns shows its runs' current figures)
    has_kept = "n_layers" in kept
    audited = (
        "SELECT a.run_id, a.series, a.audit_id, a.step, a.started_at, a.finished_at,"
        f" a.n_flagged, {'a.prev_audit_id' if 'prev_audit_id' in kept else 'NULL'}"
        " AS prev_audit_id,"
        f" {'a.n_layers IS NOT NULL' if has_kept else 'false'} AS kept,"
        " r.run_id IS NULL AS left_out,"
        f" {_redecomposed_sql() if 'decompose_json' in kept else 'false'} AS redecomposed"
        + "".join(f", a.{name} AS seen_{name}" if name in kept else f", NULL AS seen_{name}"
                  for name in seen)
        + " FROM audits AS a LEFT JOIN runs AS r ON r.run_id = a.run_id"
        " WHERE a.status = 'complete' AND a.run_id IS NOT NULL"
        " AND (r.run_id IS NULL OR r.status = 'complete')"
    )
    return f"{audited} UNION ALL BY NAME {unaudited}"


def compare_choices(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The choices of the Compare page's run selects: one per point of the Series page
    (``_series_points``: a complete audit of a complete run, in its series at its step; a run
    never audited, in its ``model · weights`` series with no step), so a run audited several
    times, or in several series, is offered under each audit, not under its latest only. An
    audit of a run the catalog left out (damaged) is none (its run has no figures to
    compare). Audits of one run at one step of one series (a nightly re-audit of an
    unchanged checkpoint) are one choice, the latest. Columns ``series``, ``step``,
    ``started_at``, ``run_id``, ``audit_id``, in series order (step, start, audit id)."""
    return run_sql(con, f"""
        WITH p AS ({_series_points(con)})
        SELECT series, step, started_at, run_id, audit_id
        FROM p
        WHERE NOT p.left_out
        QUALIFY row_number() OVER (PARTITION BY series, step, run_id
                                   ORDER BY started_at DESC NULLS LAST, audit_id DESC) = 1
        ORDER BY series, coalesce(step, 0), started_at NULLS FIRST, audit_id, run_id
    """)


# The head shares the Compare page compares per head, as compare_runs does (its ``level
# head`` rows: bfd/queries/compare_runs.sql), each raw and chance-corrected (``_adj``) with
# their intervals' ends; with ``head_type`` for head_type_changes' rule.
HEAD_SHARES: Final[tuple[str, ...]] = ("f_pp", "f_pc", "f_cp", "f_cc")


def head_figures(heads: Columns) -> Columns:
    """Of a run's ``heads`` rows (``run_detail``), what the Compare page reads of them:
    ``layer``, ``head``, ``head_type`` and, of each of ``HEAD_SHARES``, the raw and
    chance-corrected share and their intervals' ends (``f_pp``, ``f_pp_lo``, ``f_pp_hi``,
    ``f_pp_adj``, ``f_pp_adj_lo``, ``f_pp_adj_hi``; those the table holds), the columns
    compare_runs and head_type_changes read. The dashboard writes them beside the run's page
    (``runs/<run>.heads.js``), read by the Compare page for the two runs chosen only."""
    names = ["layer", "head", "head_type"] + [
        f"{share}{basis}{end}" for share in HEAD_SHARES for basis in ("", "_adj")
        for end in ("", "_lo", "_hi")]
    return {name: heads[name] for name in names if name in heads}


def series_list(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Every series with its number of runs and audits and its latest member: the audit (of
    any status) latest by step, start time and audit id, one of a complete run where the
    series has one; a run never audited is a member of its ``model · weights`` series only.
    A run audited in several series is counted in each (``run_list`` gives a run its latest
    audit's series only). ``drift_note``: the latest audit's (its 0 flagged is no pass).

    A complete audit of a run the catalog left out (damaged: ``audit_history`` lists it too)
    is a member, so a series whose runs are all damaged is listed: ``n_damaged`` counts such
    audits of the series, ``damaged_runs`` names their runs (sorted; NULL when none); its
    runs' columns are unknown. An audit that is not complete, of a run not in the catalog,
    is no member (its run may never have been published). ``step``, ``started_at`` and
    ``prev_audit_id`` (NULL: the first audit of its series) are the latest audit's; so are
    the head counts by type (``HEAD_COUNTS``, last): those the audit kept, else (a run never
    audited, an audit that kept none) its run's ``run_summary``. ``n_audits_flagged`` counts
    the series' complete audits that flagged drift, whichever is latest, and
    ``last_flagged_audit``, ``last_flagged_step`` and ``last_flagged_at`` (its start) name the
    one of them started last: a flag stays in sight after the next audit passes."""
    # (a catalog given by a caller may hold an audits table without them, or none)
    kept = (set(_column_names(con, "audits")) if "audits" in catalog_tables(con) else set())
    heads = ", ".join(f"coalesce(ka.{name}, rs.{name}) AS {name}" if name in kept
                      else f"rs.{name}" for name in HEAD_COUNTS)
    kept_join = "LEFT JOIN audits AS ka ON ka.audit_id = m.audit_id" if kept else ""
    flagging = "m.audit_status = 'complete' AND m.n_flagged > 0"
    members = (
        f"SELECT {_RUN_SERIES} AS series, r.run_id, NULL::VARCHAR AS audit_id,"
        " NULL::BIGINT AS step, NULL::TIMESTAMPTZ AS started_at,"
        " NULL::TIMESTAMPTZ AS finished_at, NULL::VARCHAR AS audit_status,"
        " NULL::BIGINT AS n_flagged, NULL::VARCHAR AS drift_note,"
        " NULL::VARCHAR AS prev_audit_id FROM runs AS r"
    )
    if audits_present(con):
        members = (
            "SELECT series, run_id, audit_id, step, started_at, finished_at,"
            f" status AS audit_status, n_flagged, {_drift_note(con, 'audits')} AS drift_note,"
            f" {_audit_column(con, 'audits', 'prev_audit_id')} AS prev_audit_id"
            " FROM audits UNION ALL BY NAME " + members
            + " WHERE r.run_id NOT IN (SELECT run_id FROM audits WHERE run_id IS NOT NULL)"
        )
    return run_sql(con, f"""
        WITH m AS (
            SELECT m.*, r.status AS run_status, r.created_at, r.run_id IS NULL AS left_out
            FROM ({members}) AS m
            LEFT JOIN runs AS r USING (run_id)
            WHERE r.run_id IS NOT NULL
                OR (m.audit_status = 'complete' AND m.run_id IS NOT NULL)
        ),
        d AS (
            SELECT series, count(*) AS n_damaged, list_sort(list(DISTINCT run_id)) AS damaged_runs
            FROM m WHERE left_out GROUP BY series
        )
        SELECT m.series, count(DISTINCT m.run_id) OVER w AS n_runs,
            count(m.audit_id) OVER w AS n_audits, coalesce(d.n_damaged, 0) AS n_damaged,
            d.damaged_runs,
            count(m.audit_id) FILTER (WHERE {flagging}) OVER w AS n_audits_flagged,
            arg_max(m.audit_id, m.started_at) FILTER (WHERE {flagging}) OVER w
                AS last_flagged_audit,
            arg_max(m.step, m.started_at) FILTER (WHERE {flagging}) OVER w AS last_flagged_step,
            max(m.started_at) FILTER (WHERE {flagging}) OVER w AS last_flagged_at,
            m.run_id AS latest_run, m.audit_id, m.audit_status,
            m.finished_at, m.n_flagged, m.drift_note, m.step, m.started_at, m.prev_audit_id,
            {heads}
        FROM m
        LEFT JOIN d USING (series)
        {kept_join}
        LEFT JOIN run_summary AS rs ON rs.run_id = m.run_id
        WINDOW w AS (PARTITION BY m.series)
        QUALIFY row_number() OVER (PARTITION BY m.series ORDER BY
            coalesce(m.run_status = 'complete', false) DESC, coalesce(m.step, 0) DESC,
            m.started_at DESC NULLS LAST, m.created_at DESC NULLS LAST, m.audit_id DESC) = 1
        ORDER BY m.series
    """)


def figures_not_kept(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The ``run_summary`` figures that audits do not keep (not in ``SEEN_FIGURES``, not the
    run's identity): ``frac_pos_resid_mean``, ``frac_pos_adj_mean``, ``f_*_adj``, ..."""
    seen = {name for name, _ in SEEN_FIGURES}
    return [name for name in _column_names(con, "run_summary")
            if name not in seen and name not in _RUN_IDENTITY]


def series_data(con: duckdb.DuckDBPyConnection) -> dict[str, pa.Table]:
    """Per-audit metrics in series order, audits, flagged drift and head-type changes.

    ``metrics`` has one row per complete audit of a series (a run audited in several series,
    or several times, appears once per audit), at that audit's step, with the model-level
    figures that audit saw (``SEEN_FIGURES`` of its ``audits`` row) and NULL for the
    ``run_summary`` figures it did not keep (``figures_not_kept``: the run's current ones may
    come from a later decomposition, so a row never mixes two); ``figures`` says where a
    row's figures come from: ``audit`` (its audits row) or ``run`` (the run's current
    ``run_summary``: a run never audited, which appears once, in its ``model · weights``
    series with no step, or an audits table without the kept columns); an audit of a run
    the catalog left out (damaged) is a point too, as ``audit_history`` lists it, its run's
    columns NULL and ``figures`` NULL where it kept none; ``damaged`` (last) is true for
    such a point only. ``comparable`` and ``drift_note``
    (after ``n_flagged``) are the audit's in ``audit_history``: whether its figures and its
    previous audit's are of one model over the same inputs, and why its drift check compared
    nothing (its n_flagged of 0 then means not checked); ``prev_audit_id`` (after them) the
    audit it was compared with: the latest earlier comparable one, not always the point
    before it (the audits between not comparable with it). Head-type changes compare each
    point's run with the run of the audit it was compared with (its ``prev_audit_id``, as its
    drift rows), or where it names none (a run never audited, an audit that is the first of
    its series) with the previous point's run of its series (by step, start time, audit id;
    then creation time), head by head, in the runs' current ``heads``, when
    ``run_pairs`` has no note for the two: one model (as drift: the same name less any
    pretrained tag, depth, num_heads and width) over the same images, img_size and prefix
    option (heads of two models given one series, or types over other images or positions,
    are no head changing). An audit whose drift rows keep the types it compared has those
    listed instead, its own record (``_kept_changes_sql``). An audit whose run, or whose
    compared audit's run, was decomposed again since with other options that change figures
    (``redecomposed``, a column of ``metrics``: a later ``--prefix include``) has none listed
    from the runs' current heads: they are not those the audit compared. ``drift`` (with
    audits): the flagged drift rows, an audit's in the order of ``bfd query drift``
    (bfd/queries/drift.sql: the largest |delta| first, a head_type row's delta 1 among
    them).
    """
    with_audits = audits_present(con)
    order = "coalesce(p.step, 0), p.started_at, s.created_at, p.audit_id, p.run_id"
    replaced = ", ".join(
        [f"CASE WHEN p.kept THEN p.seen_{name} ELSE s.{name} END AS {name}"
         for name, _ in SEEN_FIGURES]
        + [f"CASE WHEN p.kept THEN NULL ELSE s.{name} END AS {name}"
           for name in figures_not_kept(con)])
    # a point of a run left out of the catalog (damaged): no run_summary row, so its run's
    # columns and the figures its audit did not keep are NULL, and its figures NULL unless kept
    metrics = run_sql(con, f"""
        WITH p AS ({_series_points(con)})
        SELECT p.series, s.* REPLACE ({replaced}, p.run_id AS run_id), p.audit_id, p.step,
            p.started_at, p.finished_at, p.n_flagged,
            CASE WHEN p.kept THEN 'audit' WHEN NOT p.left_out THEN 'run' END AS figures,
            p.redecomposed, p.left_out AS damaged
        FROM p
        LEFT JOIN run_summary AS s ON s.run_id = p.run_id
        WHERE s.run_id IS NOT NULL OR p.left_out
        ORDER BY p.series, {order}
    """)
    # a point of a run left out is a point of the order too: its run has no heads, so no
    # change is listed against it (unknown), nor across it, but those its audit kept
    kept_sql = _kept_changes_sql(con)
    changes = run_sql(con, f"""
        WITH p AS ({_series_points(con)}),
        points AS (
            SELECT p.series, p.audit_id, p.run_id, p.prev_audit_id AS compared_with,
                p.redecomposed, lag(p.audit_id) OVER w AS before_id,
                lag(p.run_id) OVER w AS before_run, lag(p.redecomposed) OVER w AS before_redone
            FROM p
            LEFT JOIN runs AS s ON s.run_id = p.run_id
            WHERE s.status = 'complete' OR p.left_out
            WINDOW w AS (PARTITION BY p.series ORDER BY {order})
        ),
        ordered AS (
            SELECT o.series, o.audit_id, o.run_id,
                CASE WHEN o.compared_with IS NULL THEN o.before_id ELSE c.audit_id END
                    AS prev_audit_id,
                CASE WHEN o.compared_with IS NULL THEN o.before_run ELSE c.run_id END
                    AS prev_run_id,
                o.redecomposed OR coalesce(CASE WHEN o.compared_with IS NULL THEN o.before_redone
                                                ELSE c.redecomposed END, false) AS redecomposed
            FROM points AS o
            LEFT JOIN points AS c ON c.series = o.series AND c.audit_id = o.compared_with
        )
        {kept_sql}
        SELECT o.series, o.prev_audit_id, o.audit_id, o.prev_run_id, o.run_id, h.layer, h.head,
            p.head_type AS before, h.head_type AS after
        FROM ordered AS o
        JOIN heads AS h ON h.run_id = o.run_id
        JOIN heads AS p ON p.run_id = o.prev_run_id AND p.layer = h.layer AND p.head = h.head
        JOIN run_pairs AS rp ON rp.run_a = o.prev_run_id AND rp.run_b = o.run_id
        WHERE p.head_type IS DISTINCT FROM h.head_type AND rp.note IS NULL
            AND NOT o.redecomposed AND o.audit_id NOT IN (SELECT audit_id FROM typed)
        UNION ALL
        SELECT k.series, k.prev_audit_id, k.audit_id, q.run_id AS prev_run_id, k.run_id,
            k.layer, k.head, k.before, k.after
        FROM kept AS k
        LEFT JOIN audits AS q ON q.audit_id = k.prev_audit_id
        ORDER BY series, run_id, audit_id, layer, head
    """)
    out = {"metrics": _with_drift_check(con, metrics), "head_type_changes": changes,
           "left_out": left_out_rows(con)}
    if with_audits:
        out["audits"] = run_sql(con, "SELECT * FROM audits ORDER BY series, step, started_at")
        if "drift" in catalog_tables(con):
            out["drift"] = run_sql(con, """
                SELECT a.series, a.run_id, a.step, d.* EXCLUDE (series)
                FROM drift AS d
                JOIN audits AS a USING (audit_id)
                WHERE d.flagged
                ORDER BY a.series, a.step, a.started_at, d.audit_id,
                    abs(d.delta) DESC NULLS LAST, d.layer, d.head NULLS FIRST, d.metric
            """)
            out["drift_marks"] = drift_marks(out["drift"], changes)
    return out


# The start of a left-out line that names the file (``weights file '...' is``, ``weights '...'``):
# the Series page names the file by its name and step, then says the rest.
_NAMED_FILE: Final[re.Pattern[str]] = re.compile(
    r"""^weights (?:file )?(?:'[^']*'|"[^"]*") (?:is )?""")


def left_out_rows(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The checkpoint files each series' ``audit-checkpoints`` left out and no later one
    cleared (the ``checkpoints_left_out`` view: no run, no audit, so no point of the series),
    by series and step: ``why`` is the reason less the words naming the file (``not a
    readable torch checkpoint: ...``, ``do not fit 'test_vit': ...``)."""
    if "checkpoints_left_out" not in catalog_tables(con):
        return pa.table({name: pa.array([], pa.string()) for name in (
            "series", "file", "checkpoint", "reason", "why")})
    rows = run_sql(con, """
        SELECT series, file, checkpoint, step, reason, recorded_at, checkpoints, flow_run_id
        FROM checkpoints_left_out
        ORDER BY series, step NULLS LAST, file
    """)
    why = [_NAMED_FILE.sub("", r) if r else r for r in rows.column("reason").to_pylist()]
    return rows.append_column("why", pa.array(why, pa.string()))


# The audits columns the audit_history query reads beyond the first flows' (a catalog of such
# an audits table cannot run it).
_HISTORY_NEEDS: Final[tuple[str, ...]] = (
    "prev_audit_id", "drift_note", "results_version", "decompose_json",
    *(name for name, _ in SEEN_FIGURES))


def _with_drift_check(con: duckdb.DuckDBPyConnection, metrics: pa.Table) -> pa.Table:
    """``metrics`` with ``comparable``, ``drift_note`` and ``prev_audit_id`` after
    ``n_flagged``: for an audit's point, the ``audit_history`` values of that audit
    (comparable: its figures are of one model over the same inputs as its previous audit's,
    NULL for the first audit of a series or an unknown input; drift_note: why its drift check
    compared nothing, so its n_flagged of 0 is no pass; prev_audit_id: the audit it was
    compared with, the latest earlier comparable one); NULL for a run never audited, and for
    every point where the audits table lacks the columns audit_history reads, but for its
    ``prev_audit_id``, then the audits row's (where it has one: NULL names the first audit
    of a series, nothing compared)."""
    added = (("comparable", pa.bool_()), ("drift_note", pa.string()),
             ("prev_audit_id", pa.string()))
    found: dict[str, tuple[Any, ...]] = {}
    if audits_present(con) and set(_HISTORY_NEEDS) <= set(_column_names(con, "audits")):
        history = run_query(con, "audit_history")
        found = dict(zip(history.column("audit_id").to_pylist(),
                         zip(*(history.column(name).to_pylist() for name, _ in added),
                             strict=True), strict=True))
    elif audits_present(con) and "prev_audit_id" in _column_names(con, "audits"):
        found = {row["audit_id"]: (None, None, row["prev_audit_id"]) for row in run_sql(
            con, "SELECT audit_id, prev_audit_id FROM audits").to_pylist()}
    ids = metrics.column("audit_id").to_pylist()
    at = metrics.column_names.index("n_flagged") + 1
    for k, (name, kind) in enumerate(added):
        metrics = metrics.add_column(at + k, pa.field(name, kind), pa.array(
            [found.get(i, (None,) * len(added))[k] for i in ids], kind))
    return metrics


def latest_series(con: duckdb.DuckDBPyConnection) -> str | None:
    """The series of the Series page's latest point, the one its page opens on: the complete
    audit started last (then finished last, then by audit id), or, where the store has no
    audit, the series of the run created last; None on an empty store."""
    rows = run_sql(con, f"""
        WITH p AS ({_series_points(con)})
        SELECT p.series FROM p LEFT JOIN runs AS r ON r.run_id = p.run_id
        WHERE r.status = 'complete' OR p.left_out
        ORDER BY p.audit_id IS NOT NULL DESC, p.started_at DESC NULLS LAST,
            p.finished_at DESC NULLS LAST, r.created_at DESC NULLS LAST, p.audit_id DESC,
            p.run_id DESC
        LIMIT 1
    """).column("series").to_pylist()
    return rows[0] if rows else None


def positional_components(
    store_root: str | os.PathLike[str], run_id: str, grid: tuple[int, int] | None, k: int = 3,
    *, strict: bool = False,
) -> dict[str, Any] | None:
    """The first ``k`` principal components of each layer's positional factor, as images.

    ``pos`` (docs/method.md Stage 1, dims ``position, dim``) is read from the run's results at the
    attn_in site; its rows over the patch grid are centred and decomposed by SVD, and
    component j is ``U[:, j] * S[j]`` laid out on the grid (sign fixed so that its largest
    entry is positive). Returns None when the run has no published results or no stored
    ``pos``, or its tokens do not fill the grid.

    Args:
        strict: Raise the error of published results that cannot be read now (a store being
            copied) instead of returning None; None then always means there are none.

    Returns:
        ``{"layers": [...], "grid": [h, w], "pcs": [layer][j][row][col], "explained":
        [layer][j]}`` (explained: the component's share of the factor's sum of squares).
    """
    if grid is None or None in grid:
        return None
    from bfd.storage import Store, open_results_group, results_group_of

    store = Store(store_root)
    try:
        group = results_group_of(store, run_id)
    except (FileNotFoundError, ValueError):  # none published (or a damaged pointer)
        return None
    try:
        ds = open_results_group(store, group, dask=False)
        if "pos" not in ds or "position" not in ds["pos"].dims:
            return None
        # read whole here: a version removed meanwhile (the run published again by another
        # process) raises, as one removed before it was opened (it read as NaN)
        pos = ds["pos"].load()
    except (FileNotFoundError, ValueError, KeyError, OSError):
        if strict:
            raise
        return None
    if "site" in pos.dims:
        pos = pos.sel(site="attn_in") if "attn_in" in pos["site"].values else pos.isel(site=0)
    h, w = grid
    layers = [int(v) for v in pos["layer"].values] if "layer" in pos.dims else [0]
    values = np.asarray(pos.transpose(..., "position", "dim").values, dtype=np.float64)
    values = values.reshape(len(layers), *values.shape[-2:])
    if values.shape[1] < h * w:
        return None
    pcs, explained = [], []
    for matrix in values[:, -h * w :]:  # prefix tokens, if stored, come first
        centred = matrix - matrix.mean(axis=0)
        u, s, _ = np.linalg.svd(np.nan_to_num(centred), full_matrices=False)
        total = float((s**2).sum()) or 1.0
        comps = []
        for j in range(min(k, len(s))):
            comp = u[:, j] * s[j]
            if comp[np.argmax(np.abs(comp))] < 0:
                comp = -comp
            comps.append(np.round(comp.reshape(h, w), 6).tolist())
        pcs.append(comps)
        explained.append([float(s[j] ** 2 / total) for j in range(len(comps))])
    return {"layers": layers, "grid": [h, w], "pcs": pcs, "explained": explained}


def safe_file_stem(run_id: str) -> str:
    """A file name stem for a run: the run id where it is one (docs/layout.md run ids are),
    else a hash of it, so that no id read from a table can reach outside a folder."""
    if re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,150}$", run_id) and ".." not in run_id:
        return run_id
    return "run-" + hashlib.sha256(run_id.encode()).hexdigest()[:20]


def _rounded(obj: Any) -> Any:
    """Floats to 12 significant digits: DuckDB's parallel aggregates may add in another order
    from one query to the next, and a last-bit difference is no change of the data."""
    if isinstance(obj, float):
        return float(f"{obj:.12g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_rounded(v) for v in obj]
    return obj


def content_hash(obj: Any, extra: Iterable[str] = ()) -> str:
    """A short hash of JSON-able data (and extra strings), for the rebuild manifest."""
    digest = hashlib.sha256(json.dumps(_rounded(obj), sort_keys=True, default=str).encode())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()[:24]
