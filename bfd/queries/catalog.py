"""A read-only DuckDB catalog over a store's Parquet tables (docs/layout.md, "Tables and columns").

``connect`` loads every ``<store>/tables/<table>/**/*.parquet`` file into tables ``runs, layers,
heads, modes, images`` of a DuckDB database of its own (a snapshot, cached: see below), attaches
that database read-only and turns off file access from SQL. What that buys, and why not plain
views over ``read_parquet``:

- A view over ``read_parquet`` needs file access at query time, and DuckDB's
  ``allowed_directories`` grants writing as well as reading, so ``COPY ... TO`` could overwrite
  a result file. Loaded tables need no file access after ``connect``, so it is switched off and
  the configuration locked: no ``COPY TO``, ``EXPORT``, ``ATTACH`` of a file, ``INSTALL``.
- The catalog itself is attached read-only, so ``CREATE``, ``INSERT``, ``UPDATE``, ``DELETE``,
  ``ALTER`` and ``DROP`` fail inside DuckDB, whoever holds the connection.
- One snapshot: a writer renaming files in mid-query cannot give a query half a run.

Temporary objects (``CREATE TEMP ...``) stay possible on a raw connection; they live in that
connection only and change nothing stored. ``run_sql`` refuses them too: it lets through
read-only statements only (see ``check_read_only``).

Besides the raw tables the catalog holds derived views, one per ``_<view>.sql`` file beside this
module: ``latest_runs`` (newest complete run per model), ``layer_summary`` (per layer of every
complete run) and ``run_summary`` (per complete run). Raw tables stay raw: only the derived views
filter on ``runs.status = 'complete'``.

Snapshots are cached in the store, as ``<store>/catalog/<fingerprint>.duckdb`` (docs/layout.md).
The fingerprint hashes the path (relative to the store), size, mtime and inode of every file
``table_files`` lists, and a schema version (``CONTRACT``, the derived views' SQL, the DuckDB
version and ``_CATALOG_FORMAT``), so a new, replaced or removed table file, or a package
upgrade, gives a new name. ``connect`` lists the table files (os.scandir, a few ms), attaches
the snapshot of their fingerprint read-only if it exists, and otherwise builds it: in a hidden
folder ``catalog/.build-*``, then renamed into place (atomic; concurrent builders of one
fingerprint each rename their own, identical, file), after which older snapshots are removed.
A snapshot file is never written after its rename, and attaching is read-only, so a cached
snapshot is the same read-only catalog as a fresh one. A store that cannot be written
(read-only mount, no permission, ``catalog`` not a folder) gets a private snapshot in a
temporary directory, built on every call as before the cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Final, TypeAlias

import duckdb
import pyarrow as pa

__all__ = [
    "CATALOG_DIR",
    "CONTRACT",
    "DERIVED_VIEWS",
    "ReadOnlyError",
    "Store",
    "check_read_only",
    "connect",
    "refresh_catalog",
    "run_sql",
    "table_files",
]

Store: TypeAlias = str | os.PathLike[str] | duckdb.DuckDBPyConnection
ParamValue: TypeAlias = str | int | float | None
# Per table: (path, path relative to the store, stat) of each file, in table_files order.
Listing: TypeAlias = dict[str, list[tuple[str, str, os.stat_result]]]

# The contract columns of docs/layout.md (plus `model`, which every file carries), as SQL column
# definitions with the types of its "Types" paragraph. They are used only for columns that no
# file of the store holds yet, so that queries bind on an empty or partial store; columns present
# in files keep the types the writer gave them.
CONTRACT: Final[Mapping[str, str]] = {
    "runs": (
        "run_id VARCHAR, model VARCHAR, weights VARCHAR, weights_sha256 VARCHAR, images VARCHAR,"
        " images_sha256 VARCHAR, n_images BIGINT, n_skipped BIGINT, img_size INTEGER,"
        " grid_h INTEGER, grid_w INTEGER, prefix_tokens INTEGER, sites VARCHAR, layers VARCHAR,"
        " dtype VARCHAR, created_at TIMESTAMPTZ, bfd_version VARCHAR, timm_version VARCHAR,"
        " torch_version VARCHAR, config_json VARCHAR, status VARCHAR, depth INTEGER,"
        " num_heads INTEGER, width INTEGER"
    ),
    "layers": (
        "run_id VARCHAR, model VARCHAR, layer INTEGER, site VARCHAR, ss_total DOUBLE,"
        " frac_pos DOUBLE, frac_img DOUBLE, frac_int DOUBLE, pos_split_half_r DOUBLE,"
        " pos_embed_cos DOUBLE, shuffle_frac_pos DOUBLE, ss_identity_residual DOUBLE,"
        " ortho_residual DOUBLE, frac_content DOUBLE, logit_residual DOUBLE, n_images BIGINT"
        ", frac_pos_adj DOUBLE, frac_img_adj DOUBLE, frac_int_adj DOUBLE, frac_content_adj"
        " DOUBLE, frac_pos_chance DOUBLE, frac_pos_se DOUBLE, frac_pos_lo DOUBLE, frac_pos_hi"
        " DOUBLE, frac_img_se DOUBLE, frac_img_lo DOUBLE, frac_img_hi DOUBLE, frac_int_se"
        " DOUBLE, frac_int_lo DOUBLE, frac_int_hi DOUBLE, frac_content_se DOUBLE,"
        " frac_content_lo DOUBLE, frac_content_hi DOUBLE, frac_pos_adj_se DOUBLE,"
        " frac_pos_adj_lo DOUBLE, frac_pos_adj_hi DOUBLE, frac_img_adj_se DOUBLE,"
        " frac_img_adj_lo DOUBLE, frac_img_adj_hi DOUBLE, frac_int_adj_se DOUBLE,"
        " frac_int_adj_lo DOUBLE, frac_int_adj_hi DOUBLE, frac_content_adj_se DOUBLE,"
        " frac_content_adj_lo DOUBLE, frac_content_adj_hi DOUBLE, ci_halfwidth DOUBLE,"
        " n_images_for_target DOUBLE, ci_target DOUBLE"
    ),
    "heads": (
        "run_id VARCHAR, model VARCHAR, layer INTEGER, head INTEGER, e_pp DOUBLE, e_pc DOUBLE,"
        " e_cp DOUBLE, e_cc DOUBLE, f_pp DOUBLE, f_pc DOUBLE, f_cp DOUBLE, f_cc DOUBLE,"
        " head_type VARCHAR, eff_rank DOUBLE, eff_rank_sigma DOUBLE, k90 INTEGER,"
        " mode_coupling DOUBLE"
        ", e_pp_adj DOUBLE, e_pc_adj DOUBLE, e_cp_adj DOUBLE, e_cc_adj DOUBLE, f_pp_adj DOUBLE,"
        " f_pc_adj DOUBLE, f_cp_adj DOUBLE, f_cc_adj DOUBLE, f_pp_se DOUBLE, f_pp_lo DOUBLE,"
        " f_pp_hi DOUBLE, f_pc_se DOUBLE, f_pc_lo DOUBLE, f_pc_hi DOUBLE, f_cp_se DOUBLE,"
        " f_cp_lo DOUBLE, f_cp_hi DOUBLE, f_cc_se DOUBLE, f_cc_lo DOUBLE, f_cc_hi DOUBLE,"
        " f_pp_adj_se DOUBLE, f_pp_adj_lo DOUBLE, f_pp_adj_hi DOUBLE, f_pc_adj_se DOUBLE,"
        " f_pc_adj_lo DOUBLE, f_pc_adj_hi DOUBLE, f_cp_adj_se DOUBLE, f_cp_adj_lo DOUBLE,"
        " f_cp_adj_hi DOUBLE, f_cc_adj_se DOUBLE, f_cc_adj_lo DOUBLE, f_cc_adj_hi DOUBLE,"
        " head_type_stability DOUBLE"
    ),
    "modes": (
        "run_id VARCHAR, model VARCHAR, layer INTEGER, head INTEGER, mode INTEGER, sigma DOUBLE,"
        " alpha DOUBLE, beta DOUBLE, e_pp DOUBLE, e_pc DOUBLE, e_cp DOUBLE, e_cc DOUBLE,"
        " mode_type VARCHAR"
    ),
    "images": (
        "run_id VARCHAR, model VARCHAR, image_index INTEGER, image_id VARCHAR, sha256 VARCHAR,"
        " status VARCHAR, error VARCHAR"
    ),
}

# Created in this order: each view reads only tables and the views before it.
DERIVED_VIEWS: Final[tuple[str, ...]] = ("latest_runs", "layer_summary", "run_summary")

# The folder of a store that holds the cached snapshots (docs/layout.md).
CATALOG_DIR: Final[str] = "catalog"
# Part of every fingerprint: bump it when the way a snapshot is built changes in a way that
# CONTRACT, the view SQL and the DuckDB version do not show.
_CATALOG_FORMAT: Final[int] = 1
_SNAPSHOT_SUFFIX: Final[str] = ".duckdb"
_BUILD_PREFIX: Final[str] = ".build-"
# A build folder older than this was left by a process that died mid-build; it is removed.
_STALE_BUILD_SECONDS: Final[float] = 3600.0

# Statement kinds that only read. DESCRIBE, SHOW, SUMMARIZE, FROM-first and WITH parse as SELECT.
_READ_KINDS: Final[frozenset[str]] = frozenset({"SELECT", "EXPLAIN", "PRAGMA"})
_READ_PRAGMAS: Final[frozenset[str]] = frozenset(
    {
        "table_info",
        "show",
        "show_tables",
        "show_tables_expanded",
        "database_list",
        "version",
        "platform",
        "functions",
    }
)
_ALLOWED: Final[str] = "SELECT/WITH/FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN, PRAGMA table_info"
_LEADING_COMMENTS: Final[re.Pattern[str]] = re.compile(
    r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S
)
_EXPLAIN: Final[re.Pattern[str]] = re.compile(r"^EXPLAIN(?:\s+ANALY[SZ]E)?\s*(?:\([^)]*\))?", re.I)
_PRAGMA: Final[re.Pattern[str]] = re.compile(r"^PRAGMA\s+(\w+)", re.I)


class ReadOnlyError(PermissionError):
    """A statement would change the catalog or touch files; the BFD catalog only reads."""


def _scan(folder: str, rel: str, out: list[tuple[str, str, os.stat_result]]) -> None:
    """Appends ``(path, path relative to the store, stat)`` of the Parquet files below
    ``folder``, skipping names that start with ``.`` or ``_``. Like ``Path.rglob`` it does not
    descend into symbolic links to folders; a file that goes while it is listed is left out."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.startswith((".", "_")):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                _scan(entry.path, f"{rel}{entry.name}/", out)
            elif entry.name.endswith(".parquet") and entry.is_file():
                out.append((entry.path, rel + entry.name, entry.stat()))
        except FileNotFoundError:
            continue


def _list_table(root: Path, table: str) -> list[tuple[str, str, os.stat_result]]:
    """The files of ``table_files`` with their paths relative to the store and their stats
    (os.scandir: a third of the time of ``Path.rglob``, stats included)."""
    if table not in CONTRACT:
        raise ValueError(f"unknown table {table!r}; the store has tables {sorted(CONTRACT)}")
    found: list[tuple[str, str, os.stat_result]] = []
    _scan(os.path.join(root, "tables", table), f"tables/{table}/", found)
    # The order of sorted Paths: by path components.
    found.sort(key=lambda file: file[1].split("/"))
    return found


def table_files(store_root: str | os.PathLike[str], table: str) -> list[Path]:
    """Lists the Parquet files of one table of a store, in a stable order.

    Files and folders whose names start with ``.`` or ``_`` are skipped: that is where writers
    keep files before the atomic rename (docs/layout.md), and a half-written file must not be read.

    Args:
        store_root: The store directory (the one holding ``tables/``).
        table: A table name of the contract, e.g. ``"heads"``.

    Returns:
        Paths of ``<store>/tables/<table>/**/*.parquet``; empty when the table has no files yet.
    """
    return [Path(path) for path, _, _ in _list_table(Path(store_root), table)]


def _view_sql(view: str) -> str:
    return resources.files("bfd.queries").joinpath(f"_{view}.sql").read_text(encoding="utf-8")


def _load_table(build: duckdb.DuckDBPyConnection, table: str, files: list[Path]) -> None:
    """Creates ``table`` from ``files`` and adds the contract columns that no file holds."""
    if not files:
        build.execute(f"CREATE TABLE {table} ({CONTRACT[table]})")
        return
    # Files hold their own columns (hive partitioning off, so the path cannot shadow them);
    # union_by_name lets files written before a column was added sit beside newer ones.
    build.execute(
        f"CREATE TABLE {table} AS SELECT * FROM "
        "read_parquet($files, union_by_name = true, hive_partitioning = false)",
        {"files": [str(path) for path in files]},
    )
    present = {row[0] for row in build.execute(f"DESCRIBE {table}").fetchall()}
    for column in CONTRACT[table].split(","):
        name, sql_type = column.split()
        if name not in present:
            build.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")


@functools.cache
def _schema_version() -> str:
    """What, besides the table files, a snapshot depends on; a package upgrade changes it."""
    parts = [_CATALOG_FORMAT, duckdb.__version__, dict(CONTRACT)]
    parts += [[view, _view_sql(view)] for view in DERIVED_VIEWS]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _fingerprint(listing: Listing) -> str:
    """Hash of the schema version and every listed file's relative path, size, mtime, inode."""
    entries: list = [_schema_version()]
    for table, files in listing.items():
        entries.append(table)
        entries += [[rel, st.st_size, st.st_mtime_ns, st.st_ino] for _, rel, st in files]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:32]


def _build(db_path: Path, listing: Listing) -> None:
    """Writes a snapshot of the listed files to ``db_path`` (a new file), checkpointed."""
    build = duckdb.connect(str(db_path))
    try:
        for table, files in listing.items():
            _load_table(build, table, [Path(path) for path, _, _ in files])
        for view in DERIVED_VIEWS:
            build.execute(f"CREATE VIEW {view} AS {_view_sql(view)}")
        build.execute("CHECKPOINT")
    finally:
        build.close()


def _open(db_path: Path) -> duckdb.DuckDBPyConnection:
    """A connection to the snapshot ``db_path``, attached read-only, with file access off."""
    con = duckdb.connect()
    try:
        con.execute("ATTACH $path AS bfd (READ_ONLY)", {"path": str(db_path)})
        con.execute("USE bfd")
        con.execute("DETACH memory")
        # Every file the catalog needs is open now (the open handle keeps the data readable
        # when the file is renamed or removed) and SQL may not reach any other file.
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def _remove_other_snapshots(folder: Path, keep: str) -> None:
    """Removes the snapshots other than ``keep`` and build folders left by dead processes.

    Connections open on a removed snapshot keep reading it (POSIX keeps an open file). Errors
    are ignored: whatever is left is removed by a later build.
    """
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return
    stale = time.time() - _STALE_BUILD_SECONDS
    for entry in entries:
        try:
            if entry.name.startswith(_BUILD_PREFIX):
                if entry.stat(follow_symlinks=False).st_mtime < stale:
                    shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.name.endswith(_SNAPSHOT_SUFFIX) and entry.name != keep:
                os.remove(entry.path)
        except OSError:
            continue


def _build_and_open(
    root: Path, listing: Listing, name: str
) -> tuple[duckdb.DuckDBPyConnection, Path | None]:
    """Builds the snapshot ``name`` into the store's catalog folder and opens it; in a
    temporary directory instead when the store cannot be written."""
    folder = root / CATALOG_DIR
    try:
        folder.mkdir(exist_ok=True)
        build_dir = Path(tempfile.mkdtemp(prefix=_BUILD_PREFIX, dir=folder))
    except OSError:
        # Read-only mount, no permission, `catalog` is not a folder: a private snapshot.
        with tempfile.TemporaryDirectory(prefix="bfd-catalog-") as tmp:
            db_path = Path(tmp) / "catalog.duckdb"
            _build(db_path, listing)
            return _open(db_path), None
    final = folder / name
    try:
        db_path = build_dir / name
        _build(db_path, listing)
        # Opened before the rename, so a concurrent build that removes `final` right after
        # cannot take this connection's file away.
        con = _open(db_path)
        try:
            os.replace(db_path, final)
        except OSError:
            if not final.is_file():  # a concurrent builder's identical file is as good
                con.close()
                raise
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    _remove_other_snapshots(folder, keep=name)
    return con, final


def _connect(store_root: str | os.PathLike[str]) -> tuple[duckdb.DuckDBPyConnection, Path | None]:
    """``connect``, and the snapshot file it attached (None for a private snapshot)."""
    root = Path(store_root)
    if not root.is_dir():
        raise FileNotFoundError(f"store {str(root)!r} is not a directory; expected a BFD store")
    listing = {table: _list_table(root, table) for table in CONTRACT}
    name = _fingerprint(listing) + _SNAPSHOT_SUFFIX
    cached = root / CATALOG_DIR / name
    if cached.is_file():
        try:
            return _open(cached), cached
        except duckdb.Error:
            # Removed since the check (a concurrent build of a newer fingerprint) or not a
            # readable snapshot: build it again, once.
            pass
    return _build_and_open(root, listing, name)


def connect(store_root: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """Opens a read-only catalog of one store's result tables.

    The snapshot of the store's current table files is taken from ``<store>/catalog/`` when
    there is one, and built (and kept there) otherwise; see the module docstring.

    Args:
        store_root: The store directory. It must exist; it may hold no tables yet, in which case
            every table is empty but has its contract columns.

    Returns:
        A DuckDB connection whose default database holds the tables ``runs, layers, heads,
        modes, images`` and the views of ``DERIVED_VIEWS``. Statements that would change them
        fail inside DuckDB ("attached in read-only mode"), and file access from SQL is off
        ("file system operations are disabled by configuration").

    Raises:
        FileNotFoundError: ``store_root`` is not a directory.
    """
    return _connect(store_root)[0]


def refresh_catalog(store_root: str | os.PathLike[str]) -> Path | None:
    """Makes sure the snapshot of the store's current table files is cached, so that the next
    ``connect`` only attaches it (call it after writing tables).

    Args:
        store_root: The store directory.

    Returns:
        The snapshot file, or None when the store cannot be written (nothing is cached then).

    Raises:
        FileNotFoundError: ``store_root`` is not a directory.
    """
    con, path = _connect(store_root)
    con.close()
    return path


def _strip_leading_comments(sql: str) -> str:
    return _LEADING_COMMENTS.sub("", sql, count=1)


def _refuse(what: str) -> ReadOnlyError:
    return ReadOnlyError(f"the BFD catalog is read-only; refused {what} (allowed: {_ALLOWED})")


def check_read_only(sql: str) -> list[duckdb.Statement]:
    """Parses ``sql`` and checks that every statement only reads.

    Args:
        sql: One or more SQL statements.

    Returns:
        The parsed statements.

    Raises:
        ReadOnlyError: A statement is of a kind that writes or configures (INSERT, UPDATE,
            DELETE, CREATE, DROP, ALTER, COPY, ATTACH, SET, ...), a PRAGMA outside the listing
            ones, or an EXPLAIN of such a statement.
        duckdb.ParserException: ``sql`` does not parse.
    """
    try:
        statements = duckdb.extract_statements(sql)
    except ValueError as err:
        # The parser knows statement kinds that this duckdb's Python enum does not (e.g.
        # UPDATE EXTENSIONS); none of them is a read.
        raise _refuse(f"a statement of a kind this duckdb cannot name ({err})") from err
    for statement in statements:
        kind = statement.type.name
        if kind not in _READ_KINDS:
            raise _refuse(f"a statement of kind {kind}")
        text = _strip_leading_comments(statement.query)
        if kind == "PRAGMA":
            match = _PRAGMA.match(text)
            name = match.group(1).lower() if match else "?"
            if name not in _READ_PRAGMAS:
                raise _refuse(f"a statement of kind PRAGMA {name}")
        elif kind == "EXPLAIN":
            # EXPLAIN ANALYZE runs its statement, so what it explains must be a read too.
            match = _EXPLAIN.match(text)
            inner = text[match.end() :] if match else ""
            if len(check_read_only(inner)) != 1:
                raise _refuse(f"an EXPLAIN whose statement could not be told: {text!r}")
    return statements


def run_sql(store: Store, sql: str, params: Mapping[str, ParamValue] | None = None) -> pa.Table:
    """Runs one read-only SQL statement on a store's catalog.

    Args:
        store: A store directory, or a connection from ``connect`` (to run many queries on one
            snapshot without loading the store each time).
        sql: Exactly one statement of a kind ``check_read_only`` lets through; DuckDB named
            parameters (``$model``) are bound from ``params``.
        params: Values of the named parameters; keys must match the statement's parameters.

    Returns:
        The statement's result.

    Raises:
        ReadOnlyError: The statement would change something or reach a file outside the catalog.
        ValueError: ``sql`` is not exactly one statement, or ``params`` does not match its
            named parameters.
    """
    statements = check_read_only(sql)
    if len(statements) != 1:
        raise ValueError(f"run_sql runs exactly one statement; given {len(statements)}")
    wanted = set(statements[0].named_parameters)
    given = set(params or {})
    if wanted != given:
        raise ValueError(
            f"SQL parameters {sorted(wanted)} do not match the given params {sorted(given)}"
            f" (missing {sorted(wanted - given)}, unknown {sorted(given - wanted)})"
        )
    # A cursor of a given catalog has its own temporary schema and pending results, so neither
    # a temp view shadowing `heads` nor an unfinished result of the caller's reaches this query.
    con = store.cursor() if isinstance(store, duckdb.DuckDBPyConnection) else connect(store)
    try:
        return con.sql(sql, params=dict(params) if params else None).to_arrow_table()
    except duckdb.PermissionException as err:
        raise ReadOnlyError(
            "the BFD catalog reads only its store's tables; file access from SQL is off: "
            + str(err).splitlines()[0]
        ) from err
    finally:
        con.close()
