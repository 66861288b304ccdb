"""Publishing a run all at once: its results group and table files are written as a new
version beside the published one, then ONE pointer file is switched (docs/layout.md).

- ``tables/<table>/<run_id>/part-<version>.parquet`` and ``bfd.zarr/<run_id>/results-<version>``
  hold a version; a version's files are written once and never changed.
- ``runs/<run_id>/published.json`` names the published version: the store-relative path of
  each of its table files and its results group, and the sha256 of each table file's bytes
  (``bfd verify``, ``bfd runs`` and the SQL catalog find a file changed since, by one rule:
  ``bfd.storage.recorded``; pointers written before have none) with its
  size and mtime_ns as written (the SQL catalog compares a stat: ``bfd.queries.listing``;
  pointers written before have none), and ``method``: the version of the method that
  computed its results (``bfd.core.method.RESULTS_METHOD``; pointers written before have
  none: ``bfd.storage.methods.published_method`` reads them as method 1). It is replaced
  atomically (``atomic_write``),
  so every reader that follows it (the SQL catalog, ``read_table``, ``open_results``, the
  dashboard) sees the previous version or the new one, never a mix. A run without a pointer
  is not published.
- After the switch the files of other versions are removed; a publish that failed removes its
  own, and one that was killed leaves them to the next publish of the run (readers that follow
  the pointer never see them). Publishes of one run take turns on a lock
  (``runs/<run_id>/.publish.lock``), so none removes what another is writing.

Stores written before versioned publishing (``tables/<table>/model=<m>/run_id=<r>/`` and a
``results`` group, no pointer) are read as they are; a run's old files go when it is
published again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr

from .paths import (
    Store,
    atomic_write,
    legacy_table_files,
    read_json,
    validate_run_id,
    write_json_atomic,
)
from .recorded import in_tables
from .results import open_results_group, remove_group, results_groups, write_results_group
from .tables import RUN_TABLES, TABLE_SCHEMAS, conform, keep_columns_file, table_path

_LOCK_NAME: Final[str] = ".publish.lock"


def new_version() -> str:
    """A version name: UTC time (so names sort by age), then random digits (so two publishes
    in one microsecond differ)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}Z{uuid.uuid4().hex[:8]}"


def read_pointer(store: Store, run_id: str) -> dict[str, Any] | None:
    """The run's pointer (``{run_id, version, published_at, tables, results}``, and
    ``created_at``, ``sha256`` (by table, of its file's bytes), ``size`` and ``mtime_ns`` (by
    table, its file's stat when written) and ``method`` when the publish kept them), or None
    when the run is not published in the current layout.

    Raises:
        ValueError: If the pointer is not readable JSON of that form (it names the file).
    """
    path = store.published_pointer(run_id)
    try:
        pointer = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"run {run_id}: unreadable publication pointer {path}: {e}") from e
    if not isinstance(pointer, dict) or not isinstance(pointer.get("tables"), dict) \
            or not isinstance(pointer.get("sha256", {}), dict):
        raise ValueError(f"run {run_id}: {path} is not a publication pointer")
    outside = [t for t, rel in pointer["tables"].items() if not in_tables(rel, t)]
    if outside:
        raise ValueError(f"run {run_id}: {path} names a file of {outside[0]} outside the "
                         f"store's tables/{outside[0]}/ ({pointer['tables'][outside[0]]!r}): "
                         "not a publication pointer bfd wrote")
    return pointer


def _legacy_files(store: Store, run_id: str) -> dict[str, Path]:
    """The run's table files in the layout before versioned publishing, by table."""
    return legacy_table_files(store, run_id, RUN_TABLES)


def _rel(store: Store, path: Path) -> str:
    return path.relative_to(store.root).as_posix()


class Publication:
    """One version of a run being written; see ``publishing``."""

    def __init__(self, store: Store, run_id: str, previous: dict[str, Any] | None) -> None:
        self.store, self.run_id, self.version = store, run_id, new_version()
        self.tables: dict[str, str] = dict(previous["tables"]) if previous else {}
        # the sha256 of each table file's bytes, by table (those of the files carried over
        # from the previous version as it recorded them: none before they were kept)
        self.sha256: dict[str, str] = dict(previous.get("sha256") or {}) if previous else {}
        # and each table file's size and mtime_ns as written, by table (carried over alike):
        # what the SQL catalog compares with a stat (bfd.queries.listing)
        self.size: dict[str, int] = dict(previous.get("size") or {}) if previous else {}
        self.mtime_ns: dict[str, int] = dict(previous.get("mtime_ns") or {}) if previous else {}
        self.results: str | None = previous.get("results") if previous else None
        self.written: list[Path] = []
        self.group: str | None = None
        # when the run was first published (its runs.created_at), kept in the pointer too so
        # that a damaged runs table file does not lose it (bfd.storage.republish)
        self.created_at: str | None = (previous or {}).get("created_at")
        # the method that computed the results (bfd.core.method): set by the publish of a
        # decomposition (bfd.tasks.publish); a table replaced alone keeps the previous one's
        self.method: int | None = (previous or {}).get("method")

    def write_table(self, table: str, model: str, rows: Any) -> Path:
        """Write the run's rows of ``table`` (see ``conform``) into this version."""
        if table in TABLE_SCHEMAS and table not in RUN_TABLES:
            raise ValueError(f"table {table!r} is not published per run; expected one of "
                             f"{list(RUN_TABLES)}")
        data = conform(table, model, self.run_id, rows)
        path = table_path(self.store, table, self.run_id, self.version)
        self.written.append(path)
        sink = pa.BufferOutputStream()  # in memory first: its sha256 is of these bytes
        pq.write_table(data, sink, compression="zstd")
        content = sink.getvalue()
        atomic_write(path, lambda f: f.write(content))
        keep_columns_file(self.store.table_dir(table), data.schema)
        self.tables[table] = _rel(self.store, path)
        self.sha256[table] = hashlib.sha256(content).hexdigest()
        st = path.stat()  # a version's files are never written again: this stat stays
        self.size[table], self.mtime_ns[table] = st.st_size, st.st_mtime_ns
        return path

    def write_results(self, ds: xr.Dataset) -> str:
        """Write the run's results Dataset into this version; returns its group."""
        self.group = self.store.results_group(self.run_id, self.version)
        write_results_group(self.store, self.group, ds)
        self.results = self.group
        return self.group

    def pointer(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "version": self.version,
                "published_at": datetime.now(UTC).isoformat(), "tables": self.tables,
                "results": self.results,
                "sha256": {t: h for t, h in self.sha256.items() if t in self.tables},
                "size": {t: n for t, n in self.size.items() if t in self.tables},
                "mtime_ns": {t: n for t, n in self.mtime_ns.items() if t in self.tables},
                **({"created_at": self.created_at} if self.created_at else {}),
                **({"method": self.method} if self.method is not None else {})}

    def discard(self) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)
        if self.group is not None:
            remove_group(self.store, self.group)


@contextlib.contextmanager
def _run_lock(store: Store, run_id: str) -> Iterator[None]:
    """Publishes of one run take turns (an flock: released by the OS if the holder dies)."""
    path = store.run_dir(run_id) / _LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_unlisted(store: Store, run_id: str, pointer: dict[str, Any] | None) -> None:
    """Remove the run's table files and results groups that ``pointer`` does not name: older
    versions, those of failed or killed publishes, and the old layout's once a pointer exists.
    """
    keep = {store.root / rel for rel in (pointer or {}).get("tables", {}).values()}
    for table in RUN_TABLES:
        folder = store.table_dir(table) / run_id
        if folder.is_dir():
            for path in folder.iterdir():
                if path not in keep:
                    path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
    if pointer is None:
        return
    for path in _legacy_files(store, run_id).values():
        if path not in keep:
            shutil.rmtree(path.parent, ignore_errors=True)
            with contextlib.suppress(OSError):
                path.parent.parent.rmdir()
    for group in results_groups(store, run_id):
        if group != pointer.get("results"):
            remove_group(store, group)


@contextlib.contextmanager
def publishing(store: Store, run_id: str, *, keep_previous: bool = False
               ) -> Iterator[Publication]:
    """Write a new version of a run and publish it at once when the block ends.

    Args:
        store: The store.
        run_id: The run.
        keep_previous: Carry over the tables and results of the published version that this
            one does not write (to replace one table); otherwise the new version holds only
            what it writes.

    Yields:
        The ``Publication`` to write tables and results into. When the block raises, nothing
        is published and the new files are removed; the previous version stays published.
    """
    validate_run_id(run_id)
    with _run_lock(store, run_id):
        try:
            previous = read_pointer(store, run_id)
        except ValueError:
            previous = None  # a damaged pointer names nothing readable; publishing repairs it
        _remove_unlisted(store, run_id, previous)  # leftovers of killed publishes
        if previous is None and keep_previous:
            legacy = _legacy_files(store, run_id)
            groups = results_groups(store, run_id)
            previous = {"tables": {t: _rel(store, p) for t, p in legacy.items()},
                        "results": store.results_group(run_id) if
                        store.results_group(run_id) in groups else None}
        pub = Publication(store, run_id, previous if keep_previous else None)
        try:
            yield pub
            write_json_atomic(store.published_pointer(run_id), pub.pointer())
        except BaseException:
            try:
                switched = (read_pointer(store, run_id) or {}).get("version") == pub.version
            except ValueError:
                switched = False
            if not switched:
                pub.discard()
            raise
        _remove_unlisted(store, run_id, pub.pointer())


def write_table(store: Store, table: str, model: str, run_id: str, rows: Any) -> Path:
    """Write (or replace) one table of a run and publish it, keeping the run's other tables.

    Args:
        store: The store.
        table: One of ``RUN_TABLES``.
        model: Model name of the run (checked against a ``model`` column).
        run_id: The run id.
        rows: ``pyarrow.Table``, list of dicts or ``pandas.DataFrame`` with every contract
            column of the table (``model`` and ``run_id`` may be left out).

    Returns:
        Path of the written file.

    Raises:
        ValueError: See ``conform``; nothing is published then.
    """
    with publishing(store, run_id, keep_previous=True) as pub:
        return pub.write_table(table, model, rows)


def write_results(store: Store, run_id: str, ds: xr.Dataset) -> None:
    """Write (or replace) a run's results Dataset and publish it, keeping the run's tables."""
    with publishing(store, run_id, keep_previous=True) as pub:
        pub.write_results(ds)


def results_group_of(store: Store, run_id: str) -> str:
    """The Zarr group of the run's published results.

    Raises:
        FileNotFoundError: If the run has no published results.
    """
    pointer = read_pointer(store, run_id)
    group = pointer.get("results") if pointer else store.results_group(run_id)
    if group is None or (pointer is None and group not in results_groups(store, run_id)):
        raise FileNotFoundError(f"run {run_id} has no results in {store.zarr_path}")
    return group


def results_path(store: Store, run_id: str) -> str:
    """Where the run's published results are, as a path or URL of the Zarr group, without
    opening it (the old layout's group for a run without a pointer)."""
    try:
        pointer = read_pointer(store, run_id)
    except ValueError:
        pointer = None
    group = (pointer or {}).get("results") or store.results_group(run_id)
    return f"{store.zarr_path}/{group}"


def open_results(store: Store, run_id: str, dask: bool = True) -> xr.Dataset:
    """Open a run's published results lazily (dask-backed, stored chunks; see
    ``open_results_group`` for ``dask=False``): the version published now, read while it
    exists. Once another process publishes the run again (``bfd decompose RUN`` with other
    options, an audit with other decompose options), that version is removed, and reading a
    value not read yet raises ``VersionRemovedError`` (a ``FileNotFoundError``), not NaN:
    ``.load()`` the Dataset (results are small) to keep what it opened, or open it again
    for the version published then.

    Raises:
        FileNotFoundError: If the run has no published results.
    """
    return open_results_group(store, results_group_of(store, run_id), dask)


def published_files(store: Store, table: str) -> list[Path]:
    """The files of a table that readers read: per run table, the published version of each
    run (and the old layout's file of a run without a pointer); for another table, every
    Parquet file below ``tables/<table>/`` whose name does not start with ``.`` or ``_``."""
    if table not in TABLE_SCHEMAS:
        raise ValueError(f"unknown table {table!r}; expected one of {sorted(TABLE_SCHEMAS)}")
    if table not in RUN_TABLES:
        return sorted(p for p in store.table_dir(table).rglob("*.parquet")
                      if not any(part.startswith((".", "_"))
                                 for part in p.relative_to(store.table_dir(table)).parts))
    files: dict[str, Path] = {}
    runs = sorted(p.name for p in store.runs_dir.iterdir()) if store.runs_dir.is_dir() else []
    for run_id in runs:
        try:
            validate_run_id(run_id)
        except ValueError:
            continue
        try:
            pointer = read_pointer(store, run_id)
        except ValueError:
            continue  # unreadable: the run is not published (the catalog warns)
        if pointer is not None and table in pointer["tables"]:
            files[run_id] = store.root / pointer["tables"][table]
    for path in store.table_dir(table).glob("model=*/run_id=*/part-*.parquet"):
        run_id = path.parent.name.split("=", 1)[1]
        if not store.published_pointer(run_id).exists():
            files.setdefault(run_id, path)
    return [files[r] for r in sorted(files)]


def read_run_table(store: Store, table: str, run_id: str) -> pa.Table:
    """The published rows of one run in a per-run table: only that run's file is read (its
    pointer's, or the older layout's), so another run's damaged file is no concern; an empty
    table when the run has none.

    Raises:
        ValueError: If the run's pointer is unreadable.
        OSError, ValueError: If the run's file is damaged (not Parquet, cut short).
    """
    pointer = read_pointer(store, run_id)
    if pointer is not None:
        rel = pointer["tables"].get(table)
        path = store.root / rel if rel else None
    else:
        path = _legacy_files(store, run_id).get(table)
    return pq.read_table(path) if path is not None else TABLE_SCHEMAS[table].empty_table()


def read_table(store: Store, table: str) -> pa.Table:
    """All published rows of a table (contract columns in contract types).

    For tests and small tools; SQL goes through the catalog (``bfd.queries``).
    """
    files = published_files(store, table)
    if not files:
        return TABLE_SCHEMAS[table].empty_table()
    return pa.concat_tables([pq.read_table(p) for p in files], promote_options="default")

