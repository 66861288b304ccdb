"""The catalog's DuckDB snapshots of a store's table files: built, cached, opened
(docs/layout.md, "SQL catalog"; ``catalog.py`` says why a snapshot).

Snapshots are cached as ``<store>/catalog/<fingerprint>.duckdb``. The fingerprint hashes the
path (relative to the store), size, mtime and inode of every listed file (``listing.py``:
the published version of each run), what its pointer recorded of it, and a schema version,
so a switched pointer, a new or removed file, or a package upgrade gives a new name. A
missing snapshot is built in a hidden folder ``catalog/.build-*``, then renamed into place
(atomic; concurrent builders of one fingerprint each rename their own, identical, file);
then ``catalog/current.duckdb`` is replaced by a copy of it (the stable path for other
tools) and older snapshots are removed. A snapshot file is never written after its rename.

Degrading, not dying: a table file that cannot be read, or that changed after it was
published (its size or mtime and then its sha256 differ from what its pointer recorded:
``listing.changed_files``, checked when a snapshot is built), is left out with its whole run,
with a warning naming both (kept beside the snapshot as ``<fingerprint>.warnings``, one JSON
``[run_id, note]`` a line, and repeated on every connect that uses it); a store whose catalog
folder cannot be written (read-only, full, ``catalog`` not a folder) gets a private snapshot
in a temporary directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

import duckdb

from bfd.storage.audits import EVENT_TABLES as EVENT_SCHEMAS
from bfd.storage.audits import rows_of_files
from bfd.storage.paths import DamagedStoreError, keep_mode

from .listing import (
    Listing,
    ListingChanged,
    Note,
    TableFile,
    changed_files,
    leave_out,
    list_files,
)

CATALOG_DIR: Final[str] = "catalog"
CURRENT_NAME: Final[str] = "current.duckdb"
# Part of every fingerprint: bump it when the way a snapshot is built changes in a way that
# the contract, the view SQL and the DuckDB version do not show.
# 4: columns in the contract's order; 3: warnings kept as [run_id, note] lines; pointers' size,
# mtime
_CATALOG_FORMAT: Final[int] = 4
_SNAPSHOT_SUFFIX: Final[str] = ".duckdb"
_WARNINGS_SUFFIX: Final[str] = ".warnings"
_BUILD_PREFIX: Final[str] = ".build-"
# A build folder older than this was left by a process that died mid-build; it is removed.
_STALE_BUILD_SECONDS: Final[float] = 3600.0
# Lists taken again when a publish switches a pointer while a snapshot is built.
_RELISTS: Final[int] = 20

log = logging.getLogger("bfd.catalog")


class Schema:
    """What a snapshot holds besides the data: each table's contract columns (SQL column
    definitions), statements that fill in what older files lack (run after the tables are
    loaded) and the derived views (name, SQL), created in order."""

    def __init__(self, contract: Mapping[str, str], views: Sequence[tuple[str, str]],
                 fills: Sequence[str] = ()) -> None:
        self.contract, self.views, self.fills = dict(contract), list(views), list(fills)
        parts = [_CATALOG_FORMAT, duckdb.__version__, self.contract, self.views, self.fills]
        self.version = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _fingerprint(schema: Schema, listing: Listing) -> str:
    entries: list = [schema.version]
    for table, files in listing.items():
        entries.append(table)
        # and what the file's pointer recorded of it, which the build's check compares
        entries += [[f.rel, f.stat.st_size, f.stat.st_mtime_ns, f.stat.st_ino, f.published]
                    for f in files]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:32]


def _load_table(build: duckdb.DuckDBPyConnection, table: str, columns: str,
                files: list[TableFile]) -> None:
    """Creates ``table`` from ``files``, the contract columns that no file holds as NULLs.

    Its columns come in one order whatever the files' order and schemas: the contract's, then
    any other column by name. ``union_by_name`` orders them by the files it meets first (their
    names are random), so ``SELECT *`` and a row's hash (the dashboard's page keys,
    ``bfd.report.data.run_keys``) changed with the files listed.

    The audit events (``audits``, ``drift``) are read by ``bfd.storage.audits``' reader, which
    takes a series' files from its events' cache while they are as the cache holds them (a
    file an audit: hundreds in a year's series), in the table's columns.

    Raises:
        duckdb.Error, DamagedStoreError: A file cannot be read.
    """
    if not files:
        build.execute(f"CREATE TABLE {table} ({columns})")
        return
    params: dict = {"files": [f.path for f in files]}
    # Files hold their own columns (hive partitioning off, so the path cannot shadow them);
    # union_by_name lets files written before a column was added sit beside newer ones.
    source = "read_parquet($files, union_by_name = true, hive_partitioning = false)"
    if table in EVENT_SCHEMAS:
        params, source = {}, "events"
        build.register(source, rows_of_files(
            table, [(Path(f.path), f.stat.st_size, f.stat.st_mtime_ns) for f in files]))
    try:
        _create(build, table, columns, source, params)
    finally:
        if not params:
            build.unregister(source)


def _create(build: duckdb.DuckDBPyConnection, table: str, columns: str, source: str,
            params: dict) -> None:
    present = [row[0] for row in build.execute(f"DESCRIBE SELECT * FROM {source}",
                                               params).fetchall()]
    contract = [column.split() for column in columns.split(",")]
    names = {name for name, _ in contract}
    picked = [_quoted(name) if name in present else f"CAST(NULL AS {sql_type}) AS {name}"
              for name, sql_type in contract]
    picked += [_quoted(name) for name in sorted(n for n in present if n not in names)]
    build.execute(f"CREATE TABLE {table} AS SELECT {', '.join(picked)} FROM {source}", params)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def load(build: duckdb.DuckDBPyConnection, schema: Schema, listing: Listing) -> None:
    """Creates the listed files' tables (every table of the contract, empty where nothing is
    listed), the derived views, then runs the fills (which may read the views)."""
    for table, columns in schema.contract.items():
        _load_table(build, table, columns, listing.get(table, []))
    for view, sql in schema.views:
        build.execute(f"CREATE VIEW {view} AS {sql}")
    for sql in schema.fills:
        build.execute(sql)


def _build(db_path: Path, schema: Schema, listing: Listing) -> None:
    """Writes a snapshot of the listed files to ``db_path`` (a new file), checkpointed."""
    build = duckdb.connect(str(db_path))
    try:
        load(build, schema, listing)
        build.execute("CHECKPOINT")
    finally:
        build.close()


def _unreadable(listing: Listing) -> dict[str, str]:
    """The listed files DuckDB cannot read, with the reason.

    Raises:
        ListingChanged: A listed file is gone (a pointer was switched meanwhile).
    """
    bad = {}
    con = duckdb.connect()
    try:
        for files in listing.values():
            for f in files:
                if not os.path.exists(f.path):
                    raise ListingChanged(f.path)
                try:
                    con.execute("SELECT * FROM read_parquet($f, hive_partitioning = false)",
                                {"f": f.path}).fetchall()
                except duckdb.Error as err:
                    bad[f.path] = str(err).splitlines()[0]
    finally:
        con.close()
    return bad


def _build_degraded(db_path: Path, schema: Schema, listing: Listing) -> list[Note]:
    """``_build``, leaving out the files changed after they were published (``changed_files``)
    and unreadable files, and their runs; returns the warnings. The check of changed files
    runs here, when a snapshot is built: a cached snapshot's name holds every file's size and
    mtime, so a file changed since is a new name, a new build and a new check.

    Raises:
        ListingChanged: A listed file went meanwhile.
        duckdb.Error, OSError: The snapshot cannot be written (e.g. a full disk).
    """
    changed = changed_files(listing)
    listing, notes = leave_out(listing, changed, "changed after it was published")
    try:
        _build(db_path, schema, listing)
        return notes
    except (duckdb.Error, DamagedStoreError):
        bad = _unreadable(listing)
        if not bad:
            raise
    db_path.unlink(missing_ok=True)
    Path(f"{db_path}.wal").unlink(missing_ok=True)
    kept, more = leave_out(listing, bad)
    _build(db_path, schema, kept)
    return notes + more


def _remove_other_snapshots(folder: Path, keep: str) -> None:
    """Removes the snapshots other than ``keep`` (and ``current.duckdb``), their warnings, and
    build folders left by dead processes.

    Connections open on a removed snapshot keep reading it (POSIX keeps an open file). Errors
    are ignored: whatever is left is removed by a later build.
    """
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return
    stale = time.time() - _STALE_BUILD_SECONDS
    keep_stem = keep[: -len(_SNAPSHOT_SUFFIX)]
    for entry in entries:
        try:
            if entry.name.startswith(_BUILD_PREFIX):
                if entry.stat(follow_symlinks=False).st_mtime < stale:
                    shutil.rmtree(entry.path, ignore_errors=True)
            elif (entry.name.endswith((_SNAPSHOT_SUFFIX, _WARNINGS_SUFFIX))
                  and entry.name != CURRENT_NAME
                  and not entry.name.startswith(keep_stem)):
                os.remove(entry.path)
        except OSError:
            continue


def publish_current(folder: Path, snapshot: Path) -> None:
    """Replaces ``current.duckdb`` by a copy of ``snapshot`` (a copy, not a link: a tool that
    opens it for writing cannot change the snapshot ``bfd sql`` reads). A connection open on
    the previous ``current.duckdb`` keeps reading it."""
    tmp = folder / f"{_BUILD_PREFIX}current-{os.getpid()}-{time.monotonic_ns()}{_SNAPSHOT_SUFFIX}"
    try:
        shutil.copyfile(snapshot, tmp)
        keep_mode(tmp, folder / CURRENT_NAME)
        os.replace(tmp, folder / CURRENT_NAME)
    except OSError as err:
        log.warning("bfd: warning: %s was not updated (%s)", folder / CURRENT_NAME, err)
    finally:
        tmp.unlink(missing_ok=True)


def _build_in_store(folder: Path, name: str, schema: Schema, listing: Listing
                    ) -> tuple[Path, list[Note]]:
    """Builds snapshot ``name`` into the store's catalog folder; returns it and its warnings.

    Raises:
        OSError, duckdb.Error: The folder cannot be written.
    """
    folder.mkdir(exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=_BUILD_PREFIX, dir=folder))
    final = folder / name
    try:
        db_path = build_dir / name
        notes = _build_degraded(db_path, schema, listing)
        warnings_path = folder / (name[: -len(_SNAPSHOT_SUFFIX)] + _WARNINGS_SUFFIX)
        if notes:
            (build_dir / "w").write_text("".join(json.dumps(list(n)) + "\n" for n in notes),
                                         encoding="utf-8")
            keep_mode(build_dir / "w", warnings_path)
            os.replace(build_dir / "w", warnings_path)
        try:
            keep_mode(db_path, final)
            os.replace(db_path, final)
        except OSError:
            # a concurrent builder's identical file is as good, when this user may read it
            if not final.is_file() or not _readable(final):
                raise
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    publish_current(folder, final)
    _remove_other_snapshots(folder, keep=name)
    return final, notes


def _readable(path: Path) -> bool:
    """Whether this process may read ``path``: a snapshot built by another user whose umask
    made it private (0600) is not used, but built again."""
    return os.access(path, os.R_OK, effective_ids=os.access in os.supports_effective_ids)


def _cached_warnings(snapshot: Path) -> list[Note]:
    path = snapshot.with_suffix(_WARNINGS_SUFFIX)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    notes = []
    for line in lines:
        try:
            run_id, text = json.loads(line)
            notes.append(Note(run_id, text))
        except (ValueError, TypeError):  # not written by this format: the line as it is
            notes.append(Note(None, line))
    return notes


@contextlib.contextmanager
def snapshot(root: Path, schema: Schema) -> Iterator[tuple[Path, bool]]:
    """The snapshot of the store's published table files, while the block runs.

    Yields:
        Its path, and whether it is the store's cached one (else a private one, removed when
        the block ends: attach it inside the block).
    """
    for _ in range(_RELISTS):
        try:
            listing, notes = list_files(str(root), tuple(schema.contract))
            name = _fingerprint(schema, listing) + _SNAPSHOT_SUFFIX
            cached = root / CATALOG_DIR / name
            if not any(listing.values()) and not cached.parent.exists():
                # nothing published: no catalog folder is written into a folder for it (an
                # empty one named by mistake stays empty); a private snapshot answers
                cached = None
            elif cached.is_file() and _readable(cached):
                notes += _cached_warnings(cached)
            else:
                try:
                    cached, built = _build_in_store(root / CATALOG_DIR, name, schema, listing)
                    notes += built
                except ListingChanged:
                    raise
                except (OSError, duckdb.Error):
                    cached = None
            if cached is not None:
                _warn(notes)
                yield cached, True
                return
            # Read-only mount, no permission or room, `catalog` not a folder: a private one.
            with tempfile.TemporaryDirectory(prefix="bfd-catalog-") as tmp:
                db_path = Path(tmp) / "catalog.duckdb"
                notes += _build_degraded(db_path, schema, listing)
                _warn(notes)
                yield db_path, False
                return
        except ListingChanged:
            continue
    raise RuntimeError(f"the tables of store {root} kept changing while the SQL catalog was "
                       "built; try again when its publishes are done")


# The lists of ``left_out`` blocks now open: each gets every note warned while it is open.
_collectors: list[list[Note]] = []


@contextlib.contextmanager
def left_out() -> Iterator[list[Note]]:
    """The notes on what the catalogs opened in the block left out (a damaged or missing table
    file, an unreadable pointer), each once, with the run each left out (None for an audit
    event file): a reading command that got any still writes its output, and exits 1 (README,
    "Errors and exit codes")."""
    notes: list[Note] = []
    _collectors.append(notes)
    try:
        yield notes
    finally:
        _collectors.remove(notes)


def _warn(notes: list[Note]) -> None:
    for note in dict.fromkeys(notes):
        log.warning("bfd: warning: %s", note.text)
        for collected in _collectors:
            if note not in collected:
                collected.append(note)
