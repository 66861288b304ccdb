"""Why ``bfd query`` refuses a request, or why its result has no rows, in one line on stderr.

``refusal``, before the query runs: a parameter naming nothing in the store (a typo in
``--param model=...``; the known values closest to it), whatever the other parameters match
(``compare_models`` of a known and a typo'd model has rows, one side NULL), or parameters that
contradict each other (a ``run_id`` of another model, an ``audit_id`` of another series, a
``series`` holding no audit of the ``model``), or a run parameter naming a run the store holds
but has not published (extracted and not decomposed, or its extraction stopped: the catalog
has nothing of it, as ``bfd plot`` refuses it; the line names what takes it further).
``bfd query`` then writes the query's empty result (machine-readable, no rows) and exits 2
(README: an unknown model or run). ``no_rows``, after an empty result: why a ``drift`` audit
has no drift rows (exit 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Final

import pyarrow as pa

from bfd.queries.catalog import ParamValue, Store, run_sql
from bfd.queries.named import check_params, query_sql
from bfd.storage.runs import closest_known

__all__ = ["IDENTIFIERS", "NOT_IDENTIFIERS", "CountedRows", "no_rows", "no_rows_hint", "refusal",
           "unknown_values"]

# The parameters of the named queries that name something in the store: the catalog's table
# and column of what they may name, and what to call that in a sentence.
# A model as the derived views spell it (run_shapes: with its --model-arg options) of a
# complete run, or as the raw table does (the timm name alone) of a run not complete.
_MODELS: Final[str] = ("(SELECT model FROM run_shapes UNION SELECT model FROM runs "
                       "WHERE status <> 'complete')")
IDENTIFIERS: Final[dict[str, tuple[str, str, str]]] = {
    "model": (_MODELS, "model", "run"),
    "model_a": (_MODELS, "model", "run"),
    "model_b": (_MODELS, "model", "run"),
    "run_id": ("runs", "run_id", "run"),
    "run_a": ("runs", "run_id", "run"),
    "run_b": ("runs", "run_id", "run"),
    "series": ("audits", "series", "audit"),
    "audit_id": ("audits", "audit_id", "audit"),
}

# The parameters of the named queries that name nothing in the store (every declared one is in
# IDENTIFIERS or here: tests/test_queries_hints.py).
NOT_IDENTIFIERS: Final[frozenset[str]] = frozenset({"bins", "since", "threshold"})



class CountedRows:
    """A result's batches, as the writers of ``bfd.output`` read them, counting the rows;
    ``empty``: none of them (the empty result of a refused request, with the query's columns)."""

    def __init__(self, reader: pa.RecordBatchReader, *, empty: bool = False) -> None:
        self.reader = reader
        self.schema = reader.schema
        self.rows = 0
        self.empty = empty

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        if self.empty:
            return
        for batch in self.reader:
            self.rows += batch.num_rows
            yield batch


def unknown_values(store: Store, params: Mapping[str, ParamValue],
                   root: str | os.PathLike[str] | None = None) -> str | None:
    """One line naming each given parameter of ``IDENTIFIERS`` whose value the store does
    not hold (it names no run or audit), with the known values closest to it
    (``bfd.storage.closest_known``); None when there is none.

    Args:
        store: A store directory, or a connection from ``bfd.queries.connect``.
        params: The query's parameters as given (``None`` values are not given).
        root: The store directory, when ``store`` is a connection (to tell a run that is
            not published from none).
    """
    return _unknown(store, params, root)[0]


def _unknown(store: Store, params: Mapping[str, ParamValue],
             root: str | os.PathLike[str] | None = None) -> tuple[str | None, bool]:
    """``unknown_values``, and whether a parameter names nothing the catalog holds (no run,
    or a run the store holds but has not published): a mistake in the request."""
    if root is None and isinstance(store, str | os.PathLike):
        root = store
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
        pending = _unpublished(root, value) if what == "run" else None
        nothing = True
        if pending is not None:  # a run extracted or interrupted: not a typo, no results yet
            parts.append(f"{name} {str(value)!r} names a run that is not published "
                         f"({pending.status}): {pending.next}")
            continue
        if not known:
            parts.append(f"{name} {str(value)!r} names no {what}: the store holds no {what}s")
            continue
        closest = closest_known(str(value), known)
        parts.append(f"{name} {str(value)!r} names no {what} of the store; closest known: "
                     f"{', '.join(closest)}")
    return "; ".join(parts) or None, nothing


def _unpublished(root: str | os.PathLike[str] | None, run_id: ParamValue):
    """The store's run ``run_id`` when it holds it unpublished (``unpublished_run``); None
    when the store's folder is not known (a connection alone) or for no such run."""
    if root is None:
        return None
    from bfd import storage

    return storage.unpublished_run(storage.Store(root), str(run_id))


def _first_column(store: Store, sql: str, params: Mapping[str, ParamValue]) -> list:
    """The values of the first column of a statement's rows."""
    table = run_sql(store, sql, params)
    return table.column(0).to_pylist()


def _contradiction(store: Store, params: Mapping[str, ParamValue]) -> str | None:
    """One line naming given parameters, each naming something of the store, that name things
    of different models or series (so the query can have no rows): a ``run_id`` of another
    ``model`` (layer_profile, head_map), an ``audit_id`` of another ``series`` (drift), a
    ``series`` holding no audit of the ``model`` (audit_history; not said while one of its
    audits' runs is left out of the catalog: that one may be of the model). None when none."""
    given = {k: str(v) for k, v in params.items() if v is not None}
    parts = []
    for owner, item, sql, what in (
            ("model", "run_id", "SELECT coalesce(sh.model, r.model) FROM runs AS r LEFT JOIN "
             "run_shapes AS sh USING (run_id) WHERE run_id = $v", "a run of"),
            ("series", "audit_id", "SELECT series FROM audits WHERE audit_id = $v",
             "an audit of series")):
        if owner in given and item in given:
            found = _first_column(store, sql, {"v": given[item]})
            if found and found[0] != given[owner]:
                parts.append(f"{item} {given[item]!r} is {what} {found[0]}, not of {owner} "
                             f"{given[owner]!r}")
    if "series" in given and "model" in given:
        models = _first_column(store, """
            SELECT DISTINCT coalesce(sh.model, r.model) AS model FROM audits AS a
            LEFT JOIN runs AS r USING (run_id) LEFT JOIN run_shapes AS sh USING (run_id)
            WHERE a.series = $s ORDER BY model NULLS FIRST""", {"s": given["series"]})
        if models and None not in models and given["model"] not in models:
            parts.append(f"series {given['series']!r} holds no audit of model "
                         f"{given['model']!r}; its audits are of {', '.join(models)}")
    return "; ".join(parts) or None


def refusal(store: Store, query: str, params: Mapping[str, ParamValue],
            root: str | os.PathLike[str] | None = None) -> str | None:
    """Why ``bfd query`` refuses a request before running it, in one line, or None: a
    parameter that names no model, run, series or audit of the store, or a run not published
    (``_unknown``),
    whatever the others match, else parameters that contradict each other
    (``_contradiction``). Either way the query can answer nothing that was asked.

    Args:
        store: A store directory, or a connection from ``bfd.queries.connect``.
        query: A named query.
        params: Its parameters as given.
        root: The store directory, when ``store`` is a connection.

    Raises:
        ValueError: No such query, or a parameter it does not declare, or a required one
            missing (``bfd.queries.named``'s checks, said first).
    """
    check_params(query, params)
    hint, nothing = _unknown(store, params, root)
    if nothing:
        return hint
    return _contradiction(store, params)


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


def no_rows(store: Store, query: str, params: Mapping[str, ParamValue],
            root: str | os.PathLike[str] | None = None) -> tuple[str | None, bool]:
    """``no_rows_hint``, and whether the reason is a parameter that names no model, run,
    series or audit of the store, or a run not published (``bfd query`` exits 2; it refuses
    such a request before running it, ``refusal``)."""
    hint, nothing = _unknown(store, params, root)
    if hint is None and query == "drift" and params.get("series") is not None:
        hint = _no_drift(store, params)
    return hint, nothing
