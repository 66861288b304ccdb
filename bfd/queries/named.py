"""Named queries: the ``<name>.sql`` files beside this module.

Each file is one read-only statement over the catalog of ``bfd.queries.catalog``. Its header
comment says what a row is and declares the parameters in one line::

    -- params: model (required), run_id (optional), bins (default 10)

``required`` must be given (``required unless OTHER``: unless OTHER is), ``optional`` binds NULL
when not given, ``default X`` binds the string
``X``. Values are bound as DuckDB named parameters (``$model``); the SQL casts them where it needs
another type. Files whose names start with ``_`` are the catalog's derived views, not queries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from functools import cache

import duckdb
import pyarrow as pa

from bfd.queries.catalog import ParamValue, Store, connect, run_sql
from bfd.queries.specs import STEP_PARAMS, Param, QuerySpec, list_queries, read_spec, takes_steps

__all__ = ["Param", "QuerySpec", "check_params", "list_queries", "own_errors", "query_spec",
           "query_sql", "run_query", "runs_at_steps"]


@cache
def query_spec(name: str) -> QuerySpec:
    """Loads one named query and its declared parameters.

    Args:
        name: A name from ``list_queries()``.

    Returns:
        The parsed query file.

    Raises:
        ValueError: No such query, or its header does not declare parameters that match the
            ``$parameters`` its SQL uses.
    """
    spec = read_spec(name)
    used = set(duckdb.extract_statements(spec.sql)[0].named_parameters)
    declared = {param.name for param in spec.params}
    if used != declared:
        raise ValueError(
            f"query {name!r} declares parameters {sorted(declared)} but its SQL uses {sorted(used)}"
        )
    return spec


def query_sql(name: str) -> str:
    """The SQL text of one named query, header comment included."""
    return query_spec(name).sql


def _bind_params(spec: QuerySpec, params: Mapping[str, ParamValue] | None) -> dict[str, ParamValue]:
    """Checks given values against a query's declared parameters and fills in defaults.

    Args:
        spec: The query.
        params: The given values, by parameter name.

    Returns:
        One value per declared parameter.

    Raises:
        ValueError: A required parameter is missing (or None), or a given one is not declared.
    """
    given = dict(params or {})
    declared = ", ".join(str(param) for param in spec.params) or "none"
    unknown = sorted(set(given) - {param.name for param in spec.params})
    if unknown:
        raise ValueError(
            f"query {spec.name!r} has no parameter(s) {', '.join(unknown)}; "
            f"its parameters: {declared}"
        )
    missing = [p.name for p in spec.params if p.required and given.get(p.name) is None
               and (p.unless is None or given.get(p.unless) is None)]
    if missing:
        raise ValueError(
            f"query {spec.name!r} needs parameter(s) {', '.join(missing)}; given: "
            f"{', '.join(sorted(given)) or 'none'}; its parameters: {declared}"
        )
    return {
        p.name: given[p.name] if given.get(p.name) is not None else p.default for p in spec.params
    }


def _split_steps(spec: QuerySpec, params: Mapping[str, ParamValue] | None
                 ) -> tuple[dict[str, ParamValue], str | None, dict[str, int]]:
    """The parameters given less ``STEP_PARAMS`` (of a query that ``takes_steps``), the
    series and the step of each run given by one (``{"a": 12}``), checked: a step is an
    integer, needs a series and is not given beside its run's id; a series needs a step."""
    given = dict(params or {})
    if not takes_steps(spec):
        return given, None, {}
    steps = {k: given.pop(k) for k in STEP_PARAMS if k in given}
    steps = {k: v for k, v in steps.items() if v is not None}
    series = steps.pop("series", None)
    if series is None and not steps:
        return given, None, {}
    if not steps:
        raise ValueError(f"query {spec.name!r}: series names runs by their audits' steps: give "
                         "step_a and/or step_b with it (or run_a and run_b)")
    if series is None:
        raise ValueError(f"query {spec.name!r}: {' and '.join(sorted(steps))} name(s) an audit "
                         "step of a series: give series too")
    sides = {}
    for key, value in sorted(steps.items()):
        side = key.removeprefix("step_")
        if given.get(f"run_{side}") is not None:
            raise ValueError(f"query {spec.name!r}: run_{side} and {key} both name run "
                             f"{side.upper()}; give one of them")
        try:
            sides[side] = int(str(value))
        except ValueError:
            raise ValueError(f"query {spec.name!r}: {key} must be an integer step; got "
                             f"{value!r}") from None
    return given, str(series), sides


def runs_at_steps(store: Store, name: str, params: Mapping[str, ParamValue] | None
                  ) -> dict[str, ParamValue]:
    """``params`` with a run given as an audit of a series (``STEP_PARAMS``: ``series`` and
    ``step_a`` / ``step_b``) given by its run id: the run of the latest complete audit of
    the series at that step (as the Compare page reads ``compare.html?series=S&step_a=..``).

    Raises:
        ValueError: As ``check_params``, or the series has no complete audit at a step given
            (the message names its steps).
    """
    given, series, sides = _split_steps(query_spec(name), params)
    for side, step in sides.items():
        found = run_sql(store, "SELECT run_id FROM audits WHERE series = $series AND step = $step"
                        " AND status = 'complete' AND run_id IS NOT NULL"
                        " ORDER BY started_at DESC, audit_id DESC LIMIT 1",
                        {"series": series, "step": step}).column("run_id").to_pylist()
        if not found:
            steps = run_sql(store, "SELECT DISTINCT step FROM audits WHERE series = $series"
                            " AND status = 'complete' AND step IS NOT NULL ORDER BY step",
                            {"series": series}).column("step").to_pylist()
            said = (f"its steps: {', '.join(map(str, steps[:20]))}"
                    + (f", ... ({len(steps)} in all)" if len(steps) > 20 else "") if steps
                    else "no complete audit at all (bfd query audit_history lists the series)")
            raise ValueError(f"query {name!r}: series {series!r} has no complete audit at "
                             f"step {step}; {said}")
        given[f"run_{side}"] = found[0]
    return given


def check_params(name: str, params: Mapping[str, ParamValue] | None) -> None:
    """Refuses an unknown query, a parameter it does not declare and a missing required one,
    before anything reads the store (``run_query``'s checks; a run given as an audit step,
    ``STEP_PARAMS``, counts as given).

    Raises:
        ValueError: As ``run_query``.
    """
    spec = query_spec(name)
    given, _, sides = _split_steps(spec, params)
    _bind_params(spec, {**given, **{f"run_{side}": "" for side in sides}})


@contextlib.contextmanager
def own_errors(name: str) -> Iterator[None]:
    """A named query's own refusal (its SQL's ``error('<name>: ...')``, e.g. compare_models'
    ``bins must be a positive integer``) as a ``ValueError`` of that message alone, without
    DuckDB's ``Invalid Input Error:`` before it; any other error as it is."""
    try:
        yield
    except duckdb.InvalidInputException as err:
        said = str(err).strip().removeprefix("Invalid Input Error: ")
        if not said.startswith(f"{name}: "):
            raise
        raise ValueError(" ".join(said.split())) from err


def run_query(store: Store, name: str, params: Mapping[str, ParamValue] | None = None, *,
              check: bool = True) -> pa.Table:
    """Runs a named query on a store's read-only catalog.

    Args:
        store: A store directory, or a connection from ``bfd.queries.connect``.
        name: A name from ``list_queries()``.
        params: Values of the query's declared parameters (see its ``-- params:`` line); a
            query of two runs takes either as an audit step of a series too (``series``,
            ``step_a``, ``step_b``: ``runs_at_steps``).
        check: Refuse, as ``bfd query`` does, a parameter that names no model, run, series
            or audit of the store, or parameters that contradict each other
            (``bfd.queries.hints.refusal``): a typo would give rows of NULL or none (trial
            29). False for a caller that names what it has just read from the store.

    Returns:
        The query's rows; none on an empty store.

    Raises:
        ValueError: Unknown query, missing required or unknown parameter, a value the query
            refuses (``own_errors``), or, with ``check``, a parameter naming nothing of the
            store (its line as ``bfd query`` says it).
    """
    spec = query_spec(name)
    con = store if isinstance(store, duckdb.DuckDBPyConnection) or not check else connect(store)
    try:
        given = runs_at_steps(con, name, params)
        if check and given:
            from bfd.queries.hints import refusal

            refused = refusal(con, name, given,
                              root=None if con is store else store)
            if refused is not None:
                raise ValueError(refused)
        with own_errors(name):
            return run_sql(con, spec.sql, _bind_params(spec, given))
    finally:
        if con is not store:
            con.close()
