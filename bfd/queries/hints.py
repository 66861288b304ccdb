"""Why a named query returned no rows, when the reason is a parameter naming nothing in the
store (a typo in ``--param model=...``): the known values closest to it, for one line on
stderr. The result on stdout stays as it is (machine-readable, no rows); ``bfd query`` exits
2 when a parameter names nothing at all (README: an unknown model or run).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from typing import Final

import pyarrow as pa

from bfd.queries.catalog import ParamValue, Store, run_sql
from bfd.queries.named import query_sql

__all__ = ["IDENTIFIERS", "CountedRows", "no_rows", "no_rows_hint", "unknown_values"]

# The parameters of the named queries that name something in the store: the catalog's table
# and column of what they may name, and what to call that in a sentence.
IDENTIFIERS: Final[dict[str, tuple[str, str, str]]] = {
    "model": ("runs", "model", "run"),
    "model_a": ("runs", "model", "run"),
    "model_b": ("runs", "model", "run"),
    "run_id": ("runs", "run_id", "run"),
    "run_a": ("runs", "run_id", "run"),
    "run_b": ("runs", "run_id", "run"),
    "series": ("audits", "series", "audit"),
    "audit_id": ("audits", "audit_id", "audit"),
}

# Known values named beside an unknown one, the closest first.
CLOSEST: Final[int] = 3


class CountedRows:
    """A result's batches, as the writers of ``bfd.output`` read them, counting the rows."""

    def __init__(self, reader: pa.RecordBatchReader) -> None:
        self.reader = reader
        self.schema = reader.schema
        self.rows = 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for batch in self.reader:
            self.rows += batch.num_rows
            yield batch


def unknown_values(store: Store, params: Mapping[str, ParamValue]) -> str | None:
    """One line naming each given parameter of ``IDENTIFIERS`` whose value the store does
    not hold (it names no run or audit), with the known values closest to it (difflib);
    None when there is none.

    Args:
        store: A store directory, or a connection from ``bfd.queries.connect``.
        params: The query's parameters as given (``None`` values are not given).
    """
    return _unknown(store, params)[0]


def _unknown(store: Store, params: Mapping[str, ParamValue]) -> tuple[str | None, bool]:
    """``unknown_values``, and whether a parameter names nothing at all (not even a run the
    store holds unpublished): a mistake in the request."""
    parts = []
    nothing = False
    for name, value in params.items():
        if name not in IDENTIFIERS or value is None:
            continue
        table, column, what = IDENTIFIERS[name]
        sql = f"SELECT DISTINCT CAST({column} AS VARCHAR) AS v FROM {table} WHERE v IS NOT NULL"
        known = [str(v) for v in run_sql(store, sql).column("v").to_pylist()]
        if str(value) in known:
            continue
        pending = _unpublished(store, value) if what == "run" else None
        if pending is not None:  # a run extracted or interrupted: not a typo
            parts.append(f"{name} {str(value)!r} names a run that is not published "
                         f"({pending.status}): {pending.next}")
            continue
        nothing = True
        if not known:
            parts.append(f"{name} {str(value)!r} names no {what}: the store holds no {what}s")
            continue
        closest = difflib.get_close_matches(str(value), known, n=CLOSEST, cutoff=0)
        parts.append(f"{name} {str(value)!r} names no {what} of the store; closest known: "
                     f"{', '.join(closest)}")
    return "; ".join(parts) or None, nothing


def _unpublished(store: Store, run_id: ParamValue):
    """The store's run ``run_id`` when it holds it unpublished (``unpublished_run``); None
    for a connection (its store's folder is not known here) or no such run."""
    if not isinstance(store, str | os.PathLike):
        return None
    from bfd import storage

    return storage.unpublished_run(storage.Store(store), str(run_id))


def _drift_chosen_cte() -> str:
    """The ``chosen`` CTE of ``drift.sql``: its one choice of a series' audit (the latest
    complete one, or ``audit_id``), so that the hint speaks of the audit the query read."""
    sql = query_sql("drift")
    start = sql.index("WITH chosen AS (")
    return sql[start:sql.index("\n)\n", start) + 2]


def _no_drift(store: Store, params: Mapping[str, ParamValue]) -> str | None:
    """Why the ``drift`` query found no rows for a series the store holds: its chosen audit
    (the latest, or ``audit_id``) compared nothing; with the latest audit that has drift."""
    chosen = run_sql(store, _drift_chosen_cte() + """
        SELECT a.audit_id, a.step, a.prev_audit_id, a.drift_note,
               (SELECT l.audit_id || ' (step ' || l.step || ')' FROM audits AS l
                WHERE l.series = $series AND l.status = 'complete' AND EXISTS (
                    SELECT 1 FROM drift AS d WHERE d.audit_id = l.audit_id)
                ORDER BY l.step DESC, l.started_at DESC, l.audit_id DESC LIMIT 1) AS latest
        FROM chosen AS c JOIN audits AS a USING (audit_id)""",
        {"series": params.get("series"), "audit_id": params.get("audit_id")}).to_pylist()
    if not chosen:
        return None
    row = chosen[0]
    why = (row["drift_note"] if row["drift_note"] else
           "it is the first audit of its series" if row["prev_audit_id"] is None else
           "its drift was not compared (audited before the reason was kept)")
    hint = f"audit {row['audit_id']} (step {row['step']}) has no drift rows: {why}"
    if row["latest"] and params.get("audit_id") is None:
        hint += f"; the latest audit with drift: {row['latest']} (--param audit_id=...)"
    return hint


def no_rows_hint(store: Store, query: str, params: Mapping[str, ParamValue]) -> str | None:
    """Why a named query returned no rows, in one line, or None: a parameter naming nothing
    (``unknown_values``), else for ``drift`` why its audit has no drift rows."""
    return no_rows(store, query, params)[0]


def no_rows(store: Store, query: str, params: Mapping[str, ParamValue]
            ) -> tuple[str | None, bool]:
    """``no_rows_hint``, and whether the reason is a parameter that names no model, run,
    series or audit of the store at all (an unknown one: ``bfd query`` exits 2)."""
    hint, nothing = _unknown(store, params)
    if hint is None and query == "drift" and params.get("series") is not None:
        hint = _no_drift(store, params)
    return hint, nothing
