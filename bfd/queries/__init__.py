"""SQL over a store's result tables: a read-only DuckDB catalog and named queries.

Names load on first use (``bfd.lazy``), so that ``bfd query --list``, which reads only the
queries' headers (``bfd.queries.specs``), imports neither DuckDB nor pyarrow.
"""

from __future__ import annotations

from typing import Final

from bfd.lazy import lazy_exports

# name -> the module of this package that defines it
_EXPORTS: Final[dict[str, str]] = {
    "ReadOnlyError": "catalog",
    "check_read_only": "catalog",
    "connect": "catalog",
    "current_catalog": "catalog",
    "refresh_catalog": "catalog",
    "run_sql": "catalog",
    "QuerySpec": "specs",
    "list_queries": "specs",
    "query_spec": "named",
    "query_sql": "named",
    "run_query": "named",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
