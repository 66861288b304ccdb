"""SQL over a store's result tables: a read-only DuckDB catalog and named queries."""

from bfd.queries.catalog import ReadOnlyError as ReadOnlyError
from bfd.queries.catalog import check_read_only as check_read_only
from bfd.queries.catalog import connect as connect
from bfd.queries.catalog import current_catalog as current_catalog
from bfd.queries.catalog import refresh_catalog as refresh_catalog
from bfd.queries.catalog import run_sql as run_sql
from bfd.queries.named import QuerySpec as QuerySpec
from bfd.queries.named import list_queries as list_queries
from bfd.queries.named import query_spec as query_spec
from bfd.queries.named import query_sql as query_sql
from bfd.queries.named import run_query as run_query
