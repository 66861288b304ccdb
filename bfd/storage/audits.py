"""Audit events: the append-only ``audits`` and ``drift`` tables (docs/layout.md).

A run is a computation, named by what produced it; an audit is an event, one each time a run
is asked for (computed or reused), in a *series* that it extends. Both tables are written one
file per audit, never rewritten::

    tables/audits/<series folder>/<audit_id>.parquet   one row
    tables/drift/<series folder>/<audit_id>.parquet    one row per (layer, head, metric)

Every file holds its ``series`` column; the folder name (``series_folder``: the series escaped,
no Hive ``key=value``) only groups a series' files, so no reader derives a column from it that
could clash with the file's own. Stores written before kept ``series=<series>`` folders (and
drift files without ``series``); they are read as they are. Each file is written with
``atomic_write``, so a reader sees an audit whole or not at all.

A series read whole by ``read_audits``/``read_drift`` (and the SQL catalog) would open every
file of its history, one per audit: the events' cache holds the rows of a series folder's files
in one file of its own, beside the tables::

    cache/events/<table>/<series folder>.parquet   the rows of the files it names

naming each file it holds with its size and mtime. A file is read from the cache only while it
is listed in its folder with the size and mtime the cache names; any other is read itself, so a
file removed (an audit deleted by hand) is not read from the cache, and one added since is. An
audit rewrites the cache once ``CACHE_REFRESH_AT`` files of its series are not in it
(``refresh_event_cache``, under the series' lock). The cache is derived: deleting it loses
nothing, and a reader that cannot read it reads the files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .paths import DamagedStoreError, Store, atomic_write, held_lock
from .tables import keep_columns_file, partition_value, unescape_partition_value

_TS: Final = pa.timestamp("us", tz="UTC")

log = logging.getLogger("bfd.storage")

# The model-level figures of an audit's run as the audit saw them (the ``run_summary`` view's
# columns of the same names), kept in its row so that a later re-decomposition of the run
# (other options) does not rewrite the audit's history.
SEEN_FIGURES: Final[tuple[tuple[str, pa.DataType], ...]] = (
    ("n_layers", pa.int64()),
    ("n_heads", pa.int64()),
    *((f"{kind}f_{b}", pa.float64()) for kind in ("", "mean_") for b in ("pp", "pc", "cp", "cc")),
    ("frac_pos_mean", pa.float64()),
    ("frac_pos_resid_mean", pa.float64()),
    *((f"n_heads_{b}", pa.int64()) for b in ("pp", "cp", "cc", "undefined")),
    # since 2026-12-04: the chance-corrected shares, whose expectation does not move with N
    # (an audit of other N drew the raw ones off the series' level), and the check against
    # the model; NULL in an audit written before
    ("frac_pos_adj_mean", pa.float64()),
    *((f"f_{b}_adj", pa.float64()) for b in ("pp", "pc", "cp", "cc")),
    ("model_logit_residual_max", pa.float64()),
    ("model_attn_residual_max", pa.float64()),
)

AUDIT_SCHEMA: Final[pa.Schema] = pa.schema([
    ("audit_id", pa.string()),
    ("series", pa.string()),
    ("run_id", pa.string()),
    ("step", pa.int64()),
    ("started_at", _TS),
    ("finished_at", _TS),
    ("trigger", pa.string()),
    ("flow_run_id", pa.string()),
    ("status", pa.string()),
    ("prev_audit_id", pa.string()),
    ("n_flagged", pa.int32()),
    ("drift_note", pa.string()),
    ("results_version", pa.string()),
    ("decompose_json", pa.string()),
    *SEEN_FIGURES,
    # a failed audit's reason, its error's first line (NULL when complete, and in an audit
    # written before 2026-12-04): the store's history says why, not only Prefect's log
    ("error", pa.string()),
])

DRIFT_SCHEMA: Final[pa.Schema] = pa.schema([
    ("audit_id", pa.string()),
    ("series", pa.string()),
    ("prev_audit_id", pa.string()),
    ("layer", pa.int32()),
    ("head", pa.int32()),
    ("metric", pa.string()),
    ("before", pa.float64()),
    ("after", pa.float64()),
    ("delta", pa.float64()),
    ("threshold", pa.float64()),
    ("flagged", pa.bool_()),
    # a head_type row's types, as the audit compared them (NULL on the other rows, and in
    # drift written before drift kept them)
    ("type_before", pa.string()),
    ("type_after", pa.string()),
    # whether the two audits' runs are comparable (bfd.tasks.drift.not_comparable): true in
    # every row the drift check writes (it compares nothing else); NULL in drift written
    # before drift kept it, which the SQL catalog fills (an earlier bfd compared runs of
    # another N: false there, docs/layout.md)
    ("comparable", pa.bool_()),
])

EVENT_TABLES: Final[dict[str, pa.Schema]] = {"audits": AUDIT_SCHEMA, "drift": DRIFT_SCHEMA}


def new_audit_id(now: datetime | None = None) -> str:
    """A unique audit id that sorts by time: ``20260101T030000123456Z-1a2b3c4d``."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}"


def series_folder(series: str) -> str:
    """The folder of a series' event files: ``partition_value`` of the series, with a leading
    ``.`` or ``_`` escaped too (readers skip such names), and never ``key=value``.

    Raises:
        ValueError: If the series is empty, ``.`` or ``..``.
    """
    name = partition_value(series)
    return f"%{ord(name[0]):02X}{name[1:]}" if name.startswith((".", "_")) else name


# The lock of a series' audits: ``tables/audits/<series folder>/.series.lock`` (a hidden name:
# no reader of the table sees it).
SERIES_LOCK: Final[str] = ".series.lock"


def series_lock(store: Store, series: str, wait: Callable[[str], None] | None = None
                ) -> contextlib.AbstractContextManager:
    """Hold the series' lock for the block (``bfd.storage.paths.held_lock``: an ``flock``,
    reentrant within a thread): the audits of one series take turns, so that each decides
    what it compares with (and ``audit-checkpoints`` what is still to audit) from the audits
    recorded before it, and records its own before the next one decides.

    Args:
        wait: Called with one line (``waiting for another audit of series ...``) when another
            process holds the lock, before waiting for it; None: refuse at once.

    Raises:
        RunBusyError: ``wait`` is None and another process holds it.
    """
    path = store.table_dir("audits") / series_folder(series) / SERIES_LOCK
    return held_lock(
        path, wait=wait,
        busy=f"series {series} is busy: another process is auditing it (it holds {path}); "
             "wait for it to finish",
        waiting=f"waiting for another audit of series {series} (it holds {path}); this one "
                "is recorded after it")


def _event_path(store: Store, table: str, series: str, audit_id: str) -> Path:
    if not audit_id or "/" in audit_id or audit_id.startswith((".", "_")):
        raise ValueError(f"audit id must be a plain name; got {audit_id!r}")
    return store.table_dir(table) / series_folder(series) / f"{audit_id}.parquet"


def _write(path: Path, rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> Path:
    data = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows],
                                schema=schema)
    if path.exists():
        raise FileExistsError(f"{path} exists; audits are appended, never rewritten")
    atomic_write(path, lambda f: pq.write_table(data, f, compression="zstd"))
    keep_columns_file(path.parent.parent, schema)
    return path


def write_audit(store: Store, row: Mapping[str, Any]) -> Path:
    """Append one audit (a row with the ``AUDIT_SCHEMA`` columns).

    Raises:
        FileExistsError: An audit with this id is already stored.
    """
    path = _write(_event_path(store, "audits", row["series"], row["audit_id"]), [row],
                  AUDIT_SCHEMA)
    # the drift table's columns too, from the first audit on: a reader of tables/drift gets
    # its columns, no rows, before any audit compared (trial 29: no folder, FileNotFoundError)
    keep_columns_file(store.table_dir("drift"), DRIFT_SCHEMA)
    refresh_event_cache(store, row["series"])
    return path


def write_drift(store: Store, series: str, audit_id: str,
                rows: Sequence[Mapping[str, Any]]) -> Path:
    """Append the drift rows of one audit (``DRIFT_SCHEMA`` columns but ``series``, which is
    ``series``; NaN is stored as NULL)."""
    clean = [{**{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()},
              "series": series} for r in rows]
    return _write(_event_path(store, "drift", series, audit_id), clean, DRIFT_SCHEMA)


def _event_files(store: Store, table: str, series: str | None = None) -> list[Path]:
    """The event files of ``table`` (of one series, or all), sorted: ``<folder>/*.parquet``
    of this layout's series folders and the Hive folders ``series=<series>`` of stores written
    before, but names starting with ``.`` or ``_`` (a write in progress, a hidden folder)."""
    folder = store.table_dir(table)
    names = ["*"] if not series else [series_folder(series), f"series={partition_value(series)}"]
    return sorted({p for name in names for p in folder.glob(f"{name}/*.parquet")
                   if not p.name.startswith((".", "_"))
                   and not p.parent.name.startswith((".", "_"))})


def _read(store: Store, table: str, series: str | None) -> pa.Table:
    files = []
    for p in _event_files(store, table, series):
        try:
            st = p.stat()
        except OSError as err:
            raise DamagedStoreError(damaged_event_message(table, p, err)) from err
        files.append((p, st.st_size, st.st_mtime_ns))
    return rows_of_files(table, files)


def rows_of_files(table: str, files: Sequence[tuple[Path, int, int]]) -> pa.Table:
    """The rows of the event files ``files`` of ``table`` (each ``(path, size, mtime_ns)`` as
    listed), with the table's columns: those the events' cache of their folder holds with that
    size and mtime from the cache, every other one read itself (``_read_event``).

    Raises:
        DamagedStoreError: A file read itself cannot be read (``damaged_event_message``).
    """
    by_folder: dict[Path, list[tuple[Path, int, int]]] = {}
    for f in files:
        by_folder.setdefault(f[0].parent, []).append(f)
    parts = []
    for folder, listed in by_folder.items():
        covered, rows, _ = _held(table, folder,
                                 {p.name: (size, mtime) for p, size, mtime in listed})
        if covered:
            parts.append(rows.drop_columns([_FILE]))
        parts += [_read_event(table, p) for p, _, _ in listed if p.name not in covered]
    if not parts:
        return EVENT_TABLES[table].empty_table()
    return pa.concat_tables(parts)


# The events' cache (module docstring): below the store, one file per table and series folder.
CACHE_DIR: Final[str] = "cache/events"
# Files of a series folder not in its cache before an audit rewrites the cache: a reader opens
# at most about this many files beside it.
CACHE_REFRESH_AT: Final[int] = 32
# the column naming each row's file (in the cache only), and the key of what the cache holds
_FILE: Final[str] = "event_file"
_COVERS: Final[bytes] = b"bfd.event_files"
_CACHE_FORMAT: Final[int] = 1
# The caches this process has read, by path: (identity and stamps, files held, rows).
_CACHES_READ: dict[Path, tuple[tuple[int, int, int], dict[str, tuple[int, int]], pa.Table]] = {}


def cache_path(folder: Path) -> Path:
    """The events' cache of ``folder``, a series folder ``<store>/tables/<table>/<name>``:
    ``<store>/cache/events/<table>/<name>.parquet``."""
    return folder.parents[2] / CACHE_DIR / folder.parent.name / f"{folder.name}.parquet"


def _cache_schema(table: str) -> pa.Schema:
    return EVENT_TABLES[table].append(pa.field(_FILE, pa.string()))


def _cached(table: str, folder: Path) -> tuple[dict[str, tuple[int, int]], pa.Table] | None:
    """What the events' cache of ``folder`` holds: ``{file name: (size, mtime_ns)}`` and its
    rows (with the column ``event_file``); None when there is none or it cannot be read, or
    holds other columns than this bfd's (an earlier bfd's cache: its files are read), and for
    a folder that is no series folder (the table's own ``!schema.parquet``, which the catalog
    lists too)."""
    if folder.parent.name != table or folder.parents[1].name != "tables":
        return None
    path = cache_path(folder)
    try:
        st = path.stat()
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        kept = _CACHES_READ.get(path)
        if kept is not None and kept[0] == key:
            return kept[1], kept[2]
        with pq.ParquetFile(path) as f:
            said = json.loads((f.schema_arrow.metadata or {})[_COVERS])
            rows = f.read()
        if said["format"] != _CACHE_FORMAT or not rows.schema.equals(_cache_schema(table)):
            return None
        covers = {str(name): (int(size), int(mtime)) for name, (size, mtime)
                  in said["files"].items()}
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError) as err:
        if not isinstance(err, FileNotFoundError):
            log.debug("bfd: the events' cache %s is not read (%s)", path, err)
        return None
    _CACHES_READ[path] = (key, covers, rows)
    return covers, rows


def _held(table: str, folder: Path, listed: Mapping[str, tuple[int, int]]
          ) -> tuple[set[str], pa.Table, bool]:
    """The files of ``listed`` (name -> size, mtime_ns) that the events' cache of ``folder``
    holds with that size and mtime, their rows in it (with ``event_file``), and whether it
    names any other (a file gone or changed since); (set(), no rows, False) without a cache."""
    covers, rows = _cached(table, folder) or ({}, _cache_schema(table).empty_table())
    held = {name for name, stamp in listed.items() if covers.get(name) == stamp}
    stale = len(held) < len(covers)
    if stale:  # their rows are not read
        rows = rows.filter(pc.is_in(rows.column(_FILE),
                                    value_set=pa.array(sorted(held), pa.string())))
    return held, rows, stale


def refresh_event_cache(store: Store, series: str) -> None:
    """Rewrites the events' cache of each folder of ``series`` (both tables) that has
    ``CACHE_REFRESH_AT`` or more files not in it, or names a file no longer there; a file
    that cannot be read is left out of it (a reader reads it itself, and says so). Called by
    the audit that wrote the series' newest files, under the series' lock. A cache that
    cannot be written is left as it is (it is only ever a shortcut)."""
    for table in EVENT_TABLES:
        by_folder: dict[Path, dict[str, tuple[int, int]]] = {}
        for p in _event_files(store, table, series):
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                by_folder.setdefault(p.parent, {})[p.name] = (st.st_size, st.st_mtime_ns)
        for folder, listed in sorted(by_folder.items()):
            try:
                _refresh(table, folder, listed)
            except (OSError, pa.ArrowException) as err:
                log.debug("bfd: the events' cache of %s was not written (%s)", folder, err)


def _refresh(table: str, folder: Path, listed: dict[str, tuple[int, int]]) -> None:
    held, rows, stale = _held(table, folder, listed)
    if len(listed) - len(held) < CACHE_REFRESH_AT and not stale:
        return
    parts = [rows]
    for name in sorted(set(listed) - held):
        try:
            part = _read_event(table, folder / name)
        except DamagedStoreError:
            continue
        held.add(name)
        parts.append(part.append_column(_FILE, pa.array([name] * part.num_rows, pa.string())))
    said = {"format": _CACHE_FORMAT, "files": {name: list(listed[name]) for name in sorted(held)}}
    data = pa.concat_tables(parts).replace_schema_metadata({_COVERS: json.dumps(said)})
    atomic_write(cache_path(folder),
                 lambda f: pq.write_table(data, f, compression="zstd"), durable=False)


# The event files this process has read, by path, with the identity and stamps they had then:
# a file is written once and never rewritten, so a series' next read (an audit reads its
# series three times) reads only its new files (trial 32: at 360 audits, 3.1 of a reused
# audit's 6.8 s went to reading the same files again).
_EVENTS_READ: dict[Path, tuple[tuple[str, int, int, int], pa.Table]] = {}


def _read_event(table: str, path: Path) -> pa.Table:
    """One event file of ``table`` with the table's columns (NULL where an earlier bfd wrote
    none; an old drift file's series from its folder's name)."""
    schema = EVENT_TABLES[table]
    try:
        st = path.stat()
        key = (table, st.st_ino, st.st_size, st.st_mtime_ns)
        kept = _EVENTS_READ.get(path)
        if kept is not None and kept[0] == key:
            return kept[1]
        with pq.ParquetFile(path) as f:  # 4x faster than pq.read_table's dataset for one file
            part = f.read()
        if not part.schema.equals(schema):  # an earlier bfd's: its columns conformed
            part = pa.table([part.column(field.name).cast(field.type)
                             if field.name in part.column_names
                             else pa.nulls(part.num_rows, field.type) for field in schema],
                            schema=schema)
    except (pa.ArrowException, OSError) as err:
        raise DamagedStoreError(damaged_event_message(table, path, err)) from err
    if part.column("series").null_count:  # an old drift file: its series is its folder's
        value = unescape_partition_value(path.parent.name.removeprefix("series="))
        part = part.set_column(part.schema.get_field_index("series"), "series",
                               pa.array([value] * part.num_rows, pa.string()))
    _EVENTS_READ[path] = (key, part)
    return part


def damaged_event_message(table: str, path: Path, err: BaseException) -> str:
    """The line refusing to read a series whose event file ``path`` of ``table`` cannot be
    read: the event it held is lost; moving the file out of the store lets the series go on
    (its next audit compares with its last readable one)."""
    reason = " ".join(str(err).split()).removeprefix(f"Could not open Parquet input source "
                                                     f"'{path}': ").split(". ")[0]
    lost = ("audit event" if table == "audits"
            else f"drift rows of audit {path.stem}")
    return (f"{path} is damaged ({reason}); the {lost} it held is lost: move the file out of "
            "the store and run the command again (the series' next audit then compares with "
            "its last readable audit)")


def damaged_event_files(store: Store) -> list[str]:
    """One line per audit event file of the store (``audits``, ``drift``) whose Parquet
    footer does not read (truncated, garbage), with what to do: a store-level note of ``bfd
    verify``, which checks one run (the catalog leaves such a file out; ``bfd audit``
    refuses its series, ``damaged_event_message``). Reads footers only."""
    out = []
    for table in EVENT_TABLES:
        for p in _event_files(store, table):
            try:
                pq.read_metadata(p)
            except (pa.ArrowException, OSError) as err:
                out.append(damaged_event_message(table, p, err))
    return out


def read_audits(store: Store, series: str | None = None) -> list[dict[str, Any]]:
    """The audits of one series (all series when None), in series order: by step, then by
    start time."""
    rows = _read(store, "audits", series).to_pylist()
    return sorted(rows, key=lambda r: (r["series"], r["step"], r["started_at"], r["audit_id"]))


def read_drift(store: Store, series: str, audit_id: str | None = None) -> list[dict[str, Any]]:
    """The drift rows of a series, or of one of its audits, as the files hold them (an audit
    an earlier bfd compared across other images keeps its flags here; the catalog reads it
    as not comparable: docs/layout.md)."""
    rows = _read(store, "drift", series).to_pylist()
    return [r for r in rows if audit_id is None or r["audit_id"] == audit_id]


def earlier_audits(store: Store, series: str, step: int,
                   before: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The complete audits of ``series`` at or before ``step``, in series order: those an
    audit at ``step`` may compare with (``bfd.tasks.audits.compared_audit``: the latest whose
    run is comparable with its own). With ``before`` (an audit's row: its ``started_at`` and
    ``audit_id``), only those before it in series order: an audit of the same step that
    started after it is not one it follows, even when recorded first."""
    def place(r: Mapping[str, Any]) -> tuple:
        return (r["step"], r["started_at"], r["audit_id"])

    return [r for r in read_audits(store, series)
            if r["status"] == "complete" and r["step"] <= step
            and (before is None or r["step"] < step or place(r) < place(before))]
