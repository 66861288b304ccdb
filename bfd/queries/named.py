"""Named queries: the ``<name>.sql`` files beside this module.

Each file is one read-only statement over the catalog of ``bfd.queries.catalog``. Its header
comment says what a row is and declares the parameters in one line::

    -- params: model (required), run_id (optional), bins (default 10)

``required`` must be given, ``optional`` binds NULL when not given, ``default X`` binds the string
``X``. Values are bound as DuckDB named parameters (``$model``); the SQL casts them where it needs
another type. Files whose names start with ``_`` are the catalog's derived views, not queries.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

import duckdb
import pyarrow as pa

from bfd.queries.catalog import ParamValue, Store, run_sql

__all__ = ["Param", "QuerySpec", "list_queries", "query_spec", "query_sql", "run_query"]

_PARAMS_LINE: Final[re.Pattern[str]] = re.compile(r"^--\s*params:\s*(.*)$", re.M)
_PARAM_ITEM: Final[re.Pattern[str]] = re.compile(
    r"^(\w+)\s*\(\s*(required|optional|default\s+(.+?))\s*\)$"
)


@dataclass(frozen=True)
class Param:
    """One declared parameter of a named query.

    Attributes:
        name: The DuckDB named parameter, without ``$``.
        required: Whether a value must be given.
        default: The value bound when none is given (``None`` binds NULL).
    """

    name: str
    required: bool
    default: str | None = None

    def __str__(self) -> str:
        if self.required:
            return f"{self.name} (required)"
        if self.default is None:
            return f"{self.name} (optional)"
        return f"{self.name} (default {self.default})"


@dataclass(frozen=True)
class QuerySpec:
    """A named query as loaded from its ``.sql`` file.

    Attributes:
        name: The file stem.
        description: The header comment, without ``--`` and without the params line.
        params: The declared parameters, in header order.
        sql: The whole file text, comments included.
    """

    name: str
    description: str
    params: tuple[Param, ...]
    sql: str


def _parse_params(name: str, sql: str) -> tuple[Param, ...]:
    lines = _PARAMS_LINE.findall(sql)
    if len(lines) != 1:
        raise ValueError(
            f"query {name!r} must declare its parameters in exactly one '-- params:' line; "
            f"found {len(lines)}"
        )
    text = lines[0].strip()
    if text == "none":
        return ()
    params = []
    for item in text.split(","):
        match = _PARAM_ITEM.match(item.strip())
        if match is None:
            raise ValueError(
                f"query {name!r}: cannot read parameter {item.strip()!r}; expected "
                "'name (required)', 'name (optional)' or 'name (default VALUE)'"
            )
        params.append(
            Param(match.group(1), required=match.group(2) == "required", default=match.group(3))
        )
    return tuple(params)


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
    known = list_queries()
    if name not in known:
        raise ValueError(f"unknown query {name!r}; known queries: {', '.join(known)}")
    sql = resources.files("bfd.queries").joinpath(f"{name}.sql").read_text(encoding="utf-8")
    params = _parse_params(name, sql)
    used = set(duckdb.extract_statements(sql)[0].named_parameters)
    declared = {param.name for param in params}
    if used != declared:
        raise ValueError(
            f"query {name!r} declares parameters {sorted(declared)} but its SQL uses {sorted(used)}"
        )
    header = itertools.takewhile(lambda line: line.startswith("--"), sql.splitlines())
    description = "\n".join(
        line.removeprefix("--").strip() for line in header if not _PARAMS_LINE.match(line)
    )
    return QuerySpec(name=name, description=description, params=params, sql=sql)


def list_queries() -> list[str]:
    """Names of the named queries shipped with the package, sorted."""
    folder = resources.files("bfd.queries")
    return sorted(
        entry.name.removesuffix(".sql")
        for entry in folder.iterdir()
        if entry.name.endswith(".sql") and not entry.name.startswith("_")
    )


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
    missing = [p.name for p in spec.params if p.required and given.get(p.name) is None]
    if missing:
        raise ValueError(
            f"query {spec.name!r} needs parameter(s) {', '.join(missing)}; given: "
            f"{', '.join(sorted(given)) or 'none'}; its parameters: {declared}"
        )
    return {
        p.name: given[p.name] if given.get(p.name) is not None else p.default for p in spec.params
    }


def run_query(store: Store, name: str, params: Mapping[str, ParamValue] | None = None) -> pa.Table:
    """Runs a named query on a store's read-only catalog.

    Args:
        store: A store directory, or a connection from ``bfd.queries.connect``.
        name: A name from ``list_queries()``.
        params: Values of the query's declared parameters (see its ``-- params:`` line).

    Returns:
        The query's rows; none on an empty store.

    Raises:
        ValueError: Unknown query, missing required or unknown parameter.
    """
    spec = query_spec(name)
    return run_sql(store, spec.sql, _bind_params(spec, params))
