"""A read-only DuckDB catalog over a store's Parquet tables (docs/layout.md, "Tables and columns").

``connect`` loads the published table files of every run (``listing.py``: the version each
run's ``published.json`` names) into tables ``runs, layers, heads, modes, images``, and every
file of the event tables ``audits, drift``, into a DuckDB database of its own (a snapshot,
cached: ``snapshot.py``), attaches that database read-only and turns off file access from
SQL. What that buys, and why not plain views over ``read_parquet``:

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
module: ``run_shapes`` (what ``run_pairs`` compares of each complete run), ``latest_runs`` (newest
complete run per model), ``layer_summary`` (per layer of every complete run), ``run_summary``
(per complete run), ``run_pairs`` (per ordered pair of complete runs) and
``checkpoints_left_out`` (the checkpoint files of each series left out now: the latest
``left_out`` row of each file, where it is ``left out``). Raw tables stay raw:
only the derived views filter on ``runs.status = 'complete'``. The derived views name a model
as ``bfd runs`` does (``run_shapes.model``: the timm name, then the run's ``--model-arg``
options where it has any), so that two models of one timm name are two models; the raw
``runs.model`` is the timm name alone.

Snapshots are cached in the store, as ``<store>/catalog/<fingerprint>.duckdb``, with a copy at
the stable path ``catalog/current.duckdb`` for other tools; an unreadable table file leaves out
its run with a warning, and a store whose catalog cannot be written gets a private snapshot
(``snapshot.py``, docs/layout.md "SQL catalog"). ``connect(store, attach={name: store})``
attaches further stores' catalogs, read-only, under their names.

Adding a table: its contract columns go in ``CONTRACT`` (and its schema in
``bfd.storage.TABLE_SCHEMAS``). A table published per run with the others is also listed in
``RUN_TABLES`` of ``listing.py`` and ``bfd.storage.tables``; any other table (e.g. an
append-only log) is read as every Parquet file below ``tables/<table>/``.
"""

from __future__ import annotations

import contextlib
import filecmp
import functools
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Final, TypeAlias

import duckdb
import pyarrow as pa

from bfd.core.method import UNRECORDED_METHOD
from bfd.faults import duckdb_line
from bfd.storage import SEEN_FIGURES
from bfd.storage.paths import check_store

from .listing import ListingChanged, list_files
from .snapshot import CATALOG_DIR, CURRENT_NAME, Schema, publish_current, snapshot

__all__ = [
    "CATALOG_DIR",
    "CONTRACT",
    "DERIVED_VIEWS",
    "ReadOnlyError",
    "Store",
    "check_read_only",
    "connect",
    "current_catalog",
    "refresh_catalog",
    "run_sql",
    "table_files",
]

# What a query runs on: a store's path (a ``bfd.storage.Store`` is one: os.PathLike), or a
# connection from ``connect``.
Store: TypeAlias = str | os.PathLike[str] | duckdb.DuckDBPyConnection
ParamValue: TypeAlias = str | int | float | None

# The SQL types of the audits' SEEN_FIGURES.
_SEEN_COLUMNS: Final[str] = ", ".join(
    f"{name} {'BIGINT' if pa.types.is_integer(kind) else 'DOUBLE'}" for name, kind in SEEN_FIGURES)

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
        # the method version of the results (bfd.core.method), written by publishes since
        # it was kept, after the contract's columns (_FILLS: 1 for the files before)
        ", method BIGINT"
    ),
    "layers": (
        "run_id VARCHAR, model VARCHAR, layer INTEGER, site VARCHAR, ss_total DOUBLE,"
        " frac_pos DOUBLE, frac_img DOUBLE, frac_int DOUBLE, pos_split_half_r DOUBLE,"
        " pos_embed_cos DOUBLE, shuffle_frac_pos DOUBLE, ss_identity_residual DOUBLE,"
        " ortho_residual DOUBLE, frac_content DOUBLE, logit_residual DOUBLE, n_images BIGINT,"
        " model_logit_residual DOUBLE, model_attn_residual DOUBLE"
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
        " mode_coupling DOUBLE, bias_key_share DOUBLE, bias_key_pos_share DOUBLE,"
        " bias_key_con_share DOUBLE"
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
    # Events, one file per audit (bfd.storage.audits), appended, never rewritten.
    "audits": (
        "audit_id VARCHAR, series VARCHAR, run_id VARCHAR, step BIGINT, started_at TIMESTAMPTZ,"
        " finished_at TIMESTAMPTZ, trigger VARCHAR, flow_run_id VARCHAR, status VARCHAR,"
        " prev_audit_id VARCHAR, n_flagged INTEGER, drift_note VARCHAR, results_version VARCHAR,"
        " decompose_json VARCHAR, " + _SEEN_COLUMNS + ", error VARCHAR"
    ),
    "drift": (
        "audit_id VARCHAR, series VARCHAR, prev_audit_id VARCHAR, layer INTEGER, head INTEGER,"
        " metric VARCHAR, before DOUBLE, after DOUBLE, delta DOUBLE, threshold DOUBLE,"
        " flagged BOOLEAN, type_before VARCHAR, type_after VARCHAR, comparable BOOLEAN"
    ),
    # What audit-checkpoints left out, and cleared (bfd.storage.left_out): appended.
    "left_out": (
        "record_id VARCHAR, series VARCHAR, checkpoint VARCHAR, weights VARCHAR, file VARCHAR,"
        " step BIGINT, status VARCHAR, reason VARCHAR, recorded_at TIMESTAMPTZ,"
        " checkpoints VARCHAR, flow_run_id VARCHAR"
    ),
}

# Run on each snapshot after its tables and views are made: drift files written before drift
# held its series (they had Hive folders series=<series>/) take it from their audit; complete
# audits written before audits kept the figures they saw show their run's current ones; runs
# published before the method was recorded read as method 1 (bfd.core.method); and drift rows
# say whether their two runs are comparable (``_COMPARED_FILLS``).
_FILLS: Final[tuple[str, ...]] = (
    # drift rows are written before their audit's row: those of an audit never recorded (its
    # process killed between the two writes, trial 26 F8) or not yet are no audit's drift
    "DELETE FROM drift WHERE audit_id NOT IN (SELECT audit_id FROM audits)",
    f"UPDATE runs SET method = {UNRECORDED_METHOD} WHERE method IS NULL",
    "UPDATE drift SET series = a.series FROM audits AS a"
    " WHERE drift.series IS NULL AND drift.audit_id = a.audit_id",
    "UPDATE audits SET "
    + ", ".join(f"{name} = s.{name}" for name, _ in SEEN_FIGURES)
    + " FROM run_summary AS s WHERE audits.run_id = s.run_id AND audits.status = 'complete'"
    " AND audits.n_layers IS NULL",
)
# Drift an earlier bfd compared across runs the drift check refuses today (another N, other
# images, img_size, model or prefix option: bfd.tasks.drift.not_comparable; the verdict is
# ``_drift_compared.sql``'s): its rows say comparable false and flag nothing, and its audit
# counts no flag and says why in its drift_note, as an audit that compared nothing does. The
# rows keep before, after, delta and threshold. Every other drift row says comparable true
# (where a run of the pair is left out of the catalog, unknown: what its file says, true in
# drift the current check wrote, NULL in older drift; its flags kept).
_COMPARED_FILLS: Final[tuple[str, ...]] = (
    "CREATE TEMP TABLE drift_compared AS {drift_compared}",
    "UPDATE audits SET n_flagged = 0, drift_note = c.note FROM drift_compared AS c"
    " WHERE audits.audit_id = c.audit_id AND NOT c.comparable AND audits.drift_note IS NULL",
    "UPDATE drift SET comparable = coalesce(c.comparable, drift.comparable),"
    " flagged = drift.flagged AND c.comparable IS NOT false"
    " FROM drift_compared AS c WHERE drift.audit_id = c.audit_id",
    "DROP TABLE drift_compared",
)

# Created in this order: each view reads only tables and the views before it.
DERIVED_VIEWS: Final[tuple[str, ...]] = ("run_shapes", "latest_runs", "layer_summary",
                                          "run_summary", "run_pairs", "checkpoints_left_out")


# Statement kinds that only read. DESCRIBE, SHOW, SUMMARIZE, FROM-first and WITH parse as SELECT.
_READ_KINDS: Final[frozenset[str]] = frozenset({"SELECT", "EXPLAIN", "PRAGMA"})
# (PRAGMA show is not among them: DuckDB's parser takes no PRAGMA of that name)
_READ_PRAGMAS: Final[frozenset[str]] = frozenset(
    {
        "table_info",
        "show_tables",
        "show_tables_expanded",
        "database_list",
        "version",
        "platform",
        "functions",
    }
)
_ALLOWED: Final[str] = (
    "SELECT/WITH/FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN [ANALYZE] of one of them, and "
    f"PRAGMA {', '.join(sorted(_READ_PRAGMAS))}"
)
_LEADING_COMMENTS: Final[re.Pattern[str]] = re.compile(
    r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S
)
_EXPLAIN: Final[re.Pattern[str]] = re.compile(r"^EXPLAIN(?:\s+ANALY[SZ]E)?\s*(?:\([^)]*\))?", re.I)
_PRAGMA: Final[re.Pattern[str]] = re.compile(r"^PRAGMA\s+(\w+)", re.I)
# The keyword(s) a statement starts with, as typed: DuckDB's kind of a statement is not always
# its keyword (INSTALL is of kind LOAD, USE and RESET of SET, CHECKPOINT of CALL, ...).
_KEYWORDS: Final[re.Pattern[str]] = re.compile(r"^([A-Za-z_]+)(?:\s+([A-Za-z_]+))?")
_TWO_WORDS: Final[frozenset[str]] = frozenset({
    "FORCE INSTALL", "FORCE CHECKPOINT", "IMPORT DATABASE", "EXPORT DATABASE", "SET VARIABLE",
    "RESET VARIABLE", "UPDATE EXTENSIONS", "MERGE INTO"})
_ALIAS: Final[re.Pattern[str]] = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_RESERVED_ALIASES: Final[frozenset[str]] = frozenset(
    {"bfd", "memory", "system", "temp", "main"})


class _SnapshotGone(Exception):
    """A cached snapshot could not be attached; it was removed, to be built again."""


class ReadOnlyError(PermissionError):
    """A statement would change the catalog or touch files; the BFD catalog only reads."""


def table_files(store_root: str | os.PathLike[str], table: str) -> list[Path]:
    """Lists the Parquet files of one table that the catalog reads, in a stable order: the
    published version of each run (``listing.py``).

    Args:
        store_root: The store directory (the one holding ``tables/``).
        table: A table name of the contract, e.g. ``"heads"``.

    Returns:
        Paths of the table's files; empty when the table has no published files yet.
    """
    if table not in CONTRACT:
        raise ValueError(f"unknown table {table!r}; the store has tables {sorted(CONTRACT)}")
    for _ in range(20):
        try:
            listing, _notes = list_files(os.fspath(store_root), (table,))
            return [Path(f.path) for f in listing[table]]
        except ListingChanged:
            continue
    raise RuntimeError(f"the tables of store {store_root} kept changing; try again")


def _view_sql(view: str) -> str:
    return resources.files("bfd.queries").joinpath(f"_{view}.sql").read_text(encoding="utf-8")


@functools.cache
def _schema() -> Schema:
    compared = _view_sql("drift_compared")
    fills = _FILLS + tuple(sql.format(drift_compared=compared) for sql in _COMPARED_FILLS)
    return Schema(CONTRACT, [(view, _view_sql(view)) for view in DERIVED_VIEWS], fills)


def _open(stores: Mapping[str, Path]) -> tuple[duckdb.DuckDBPyConnection, Path | None]:
    """A connection with each store's snapshot attached read-only under its name (the first
    one as ``bfd``, the default), and file access off; and the first one's cached snapshot
    (None for a private one)."""
    with contextlib.ExitStack() as stack:
        paths = {}
        for alias, root in stores.items():
            check_store(root)  # before a snapshot writes catalog/ into a folder of other files
            path, cached = stack.enter_context(snapshot(root, _schema()))
            paths[alias] = (path, cached)
        # no temporary folder: DuckDB's default, ./.tmp of the working directory, stays
        # readable by SQL once file access is off (read_text('.tmp/...'): trial 25, F3); a
        # query larger than memory then fails rather than spilling there
        con = duckdb.connect(config={"temp_directory": ""})
        try:
            for alias, (path, cached) in paths.items():
                try:
                    con.execute(f'ATTACH $path AS "{alias}" (READ_ONLY)', {"path": str(path)})
                except duckdb.Error as err:
                    if not cached:
                        raise
                    # Removed since it was listed (a concurrent build of a newer one) or not
                    # a readable snapshot: the next try lists again and builds it if need be.
                    with contextlib.suppress(OSError):
                        os.remove(path)
                    raise _SnapshotGone(str(path)) from err
            con.execute("USE bfd")
            con.execute("DETACH memory")
            # Every file the catalog needs is open now (the open handle keeps the data
            # readable when the file is renamed or removed) and SQL may not reach any other.
            con.execute("SET enable_external_access = false")
            # dates, hours and day boundaries of the stored instants in UTC, as they print,
            # whatever TZ says (under TZ=America/Adak, started_at::DATE was the day before
            # the printed one, and SET TimeZone is refused once locked: trial 31)
            con.execute("SET TimeZone = 'UTC'")
            con.execute("SET lock_configuration = true")
        except BaseException:
            con.close()
            raise
        first, cached = paths["bfd"]
        return con, first if cached else None


def _connect(store_root: str | os.PathLike[str],
             attach: Mapping[str, str | os.PathLike[str]] | None = None,
             ) -> tuple[duckdb.DuckDBPyConnection, Path | None]:
    """``connect``, and the snapshot file it attached (None for a private snapshot)."""
    stores = {"bfd": Path(store_root)}
    for alias, root in (attach or {}).items():
        if not _ALIAS.match(alias) or alias.lower() in _RESERVED_ALIASES:
            raise ValueError(f"--attach name {alias!r} must be a plain SQL name (letters, "
                             f"digits, _) other than {sorted(_RESERVED_ALIASES)}")
        stores[alias] = Path(root)
    try:
        return _open(stores)
    except _SnapshotGone:
        return _open(stores)


def connect(store_root: str | os.PathLike[str],
            attach: Mapping[str, str | os.PathLike[str]] | None = None,
            ) -> duckdb.DuckDBPyConnection:
    """Opens a read-only catalog of one store's result tables.

    The snapshot of the store's published table files is taken from ``<store>/catalog/`` when
    there is one, and built (and kept there) otherwise; see ``snapshot.py``.

    Args:
        store_root: The store directory. It must exist and be a store (``check_store``); it may
            hold no tables yet (an empty folder is a new store), in which case every table is
            empty but has its contract columns.
        attach: Further stores by name: each one's catalog is attached read-only as a database
            of that name (``SELECT ... FROM staging.heads``), to compare stores.

    Returns:
        A DuckDB connection whose default database holds the tables ``runs, layers, heads,
        modes, images, audits, drift, left_out`` and the views of ``DERIVED_VIEWS``. Statements that
        would change them fail inside DuckDB ("attached in read-only mode"), and file access
        from SQL is off ("file system operations are disabled by configuration").

    Raises:
        FileNotFoundError: ``store_root`` (or an attached store) is not a directory.
        NotAStoreError: It is a folder of other files, not a store (``check_store``).
    """
    return _connect(store_root, attach)[0]


def refresh_catalog(store_root: str | os.PathLike[str]) -> Path | None:
    """Makes sure the snapshot of the store's current table files is cached (and is
    ``catalog/current.duckdb``), so that the next ``connect`` only attaches it (call it after
    writing tables).

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


def current_catalog(store_root: str | os.PathLike[str]) -> Path:
    """The stable path of the store's catalog, ``<store>/catalog/current.duckdb``, brought up
    to date: a copy of the newest snapshot, replaced atomically on each rebuild, for other
    tools to open read-only (a connection open on it keeps its version across a rebuild).

    Raises:
        FileNotFoundError: ``store_root`` is not a directory.
        PermissionError: The store cannot be written, so its stable catalog cannot be brought
            up to date (a fault of the environment, exit 1, as any read-only store).
    """
    root = Path(store_root)
    path = refresh_catalog(root)
    current = root / CATALOG_DIR / CURRENT_NAME
    if path is None:
        old = (f" ({current} is left from its last write: it may lack newer runs)"
               if current.is_file() else "")
        if "\\" in str(root.absolute()):  # trial 31: said as a store that cannot be written
            raise PermissionError(
                f"store {str(root)!r} has a backslash in its path, which DuckDB reads as '/', "
                f"so its stable catalog file cannot be made there{old}; query it with bfd sql "
                "(a private catalog each time, slower), or move the store to a path without one")
        raise PermissionError(f"store {str(root)!r} cannot be written, so its stable catalog "
                              f"file cannot be brought up to date{old}; query it with bfd sql")
    if not current.is_file() or not filecmp.cmp(current, path, shallow=False):
        publish_current(root / CATALOG_DIR, path)
    return current


def _strip_leading_comments(sql: str) -> str:
    return _LEADING_COMMENTS.sub("", sql, count=1)


def _refuse(what: str) -> ReadOnlyError:
    return ReadOnlyError(f"the BFD catalog is read-only; refused {what} (allowed: {_ALLOWED})")


def _typed(text: str) -> str | None:
    """The keyword(s) a statement starts with (``text``, leading comments stripped), upper
    case: ``INSTALL``, ``FORCE INSTALL``; None when it starts otherwise."""
    match = _KEYWORDS.match(text)
    if match is None:
        return None
    two = " ".join(w.upper() for w in match.groups() if w)
    return two if two in _TWO_WORDS else match.group(1).upper()


def _kind_of(text: str, kind: str) -> str:
    """What a refusal calls a statement of DuckDB's ``kind`` that starts as ``text``: ``a
    statement of kind CREATE`` when its keyword is the kind's name, else its keyword(s) as
    typed first: ``INSTALL, a statement of kind LOAD``."""
    typed = _typed(text)
    if typed is None or typed.split()[0] == kind:
        return f"a statement of kind {kind}"
    return f"{typed}, a statement of kind {kind}"


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
        text = _strip_leading_comments(statement.query)
        try:
            kind = statement.type.name
        except ValueError as err:  # UPDATE EXTENSIONS, as above
            typed = _typed(text)
            raise _refuse(f"{typed + ', ' if typed else ''}a statement of a kind this duckdb "
                          f"cannot name ({err})") from err
        if kind not in _READ_KINDS:
            raise _refuse(_kind_of(text, kind))
        if kind == "PRAGMA":
            match = _PRAGMA.match(text)
            if match is None:  # IMPORT DATABASE is of kind PRAGMA
                raise _refuse(_kind_of(text, kind))
            name = match.group(1).lower()
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
            + duckdb_line(err)
        ) from err
    finally:
        con.close()
