"""The named queries' headers: their names, what each returns and the parameters it
declares (``bfd.queries.named`` says how a header is written), read with the standard library
alone, so that ``bfd query --list`` imports neither DuckDB nor pyarrow. ``bfd.queries.named``
checks a header against its SQL and runs the query.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = ["STEP_PARAMS", "Param", "QuerySpec", "list_queries", "read_spec", "takes_steps"]

# Every query of a pair of runs (``run_a`` and ``run_b``, and no ``series`` of its own) also
# takes either run as an audit of a series, as the Compare page's address does: ``series``
# with ``step_a`` and/or ``step_b``, each the run of the latest complete audit of the series
# at that step (``bfd.queries.named.runs_at_steps``).
STEP_PARAMS: Final[tuple[str, ...]] = ("series", "step_a", "step_b")

_PARAMS_LINE: Final[re.Pattern[str]] = re.compile(r"^--\s*params:\s*(.*)$", re.M)
_PARAM_ITEM: Final[re.Pattern[str]] = re.compile(
    r"^(\w+)\s*\(\s*(required(?:\s+unless\s+(\w+))?|optional|default\s+(.+?))\s*\)$"
)


@dataclass(frozen=True)
class Param:
    """One declared parameter of a named query.

    Attributes:
        name: The DuckDB named parameter, without ``$``.
        required: Whether a value must be given.
        default: The value bound when none is given (``None`` binds NULL).
        unless: The parameter whose value, given, makes this one optional (``model
            (required unless run_id)``); None when it is required always or not at all.
    """

    name: str
    required: bool
    default: str | None = None
    unless: str | None = None

    def __str__(self) -> str:
        if self.required and self.unless:
            return f"{self.name} (required unless {self.unless})"
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

    @property
    def steps_line(self) -> str:
        """What ``bfd query --list`` says of ``STEP_PARAMS`` for a query that takes them."""
        return "; or series with step_a and/or step_b" if takes_steps(self) else ""


def takes_steps(spec: QuerySpec) -> bool:
    """Whether ``spec`` takes its two runs as audits of a series too (``STEP_PARAMS``)."""
    names = {param.name for param in spec.params}
    return {"run_a", "run_b"} <= names and not names & set(STEP_PARAMS)


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
                "'name (required)', 'name (required unless OTHER)', 'name (optional)' or "
                "'name (default VALUE)'"
            )
        params.append(Param(match.group(1), required=match.group(2).startswith("required"),
                            default=match.group(4), unless=match.group(3)))
    return tuple(params)


def list_queries() -> list[str]:
    """Names of the named queries shipped with the package, sorted."""
    folder = resources.files("bfd.queries")
    return sorted(
        entry.name.removesuffix(".sql")
        for entry in folder.iterdir()
        if entry.name.endswith(".sql") and not entry.name.startswith("_")
    )


def read_spec(name: str) -> QuerySpec:
    """One named query's file and the parameters its header declares, not checked against
    its SQL (``bfd.queries.query_spec`` does that).

    Raises:
        ValueError: No such query, or a header that declares no parameters line or cannot
            be read.
    """
    known = list_queries()
    if name not in known:
        raise ValueError(f"unknown query {name!r}; known queries: {', '.join(known)}")
    sql = resources.files("bfd.queries").joinpath(f"{name}.sql").read_text(encoding="utf-8")
    params = _parse_params(name, sql)
    header = itertools.takewhile(lambda line: line.startswith("--"), sql.splitlines())
    description = "\n".join(
        line.removeprefix("--").strip() for line in header if not _PARAMS_LINE.match(line)
    )
    return QuerySpec(name=name, description=description, params=params, sql=sql)
