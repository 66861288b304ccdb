"""Which table files the SQL catalog reads: the published version of every run, as its
pointer ``runs/<run_id>/published.json`` names it (docs/layout.md, "Publishing").

This reads the store's plain files with the standard library only, so ``bfd sql`` loads no
Zarr, xarray or torch; ``bfd.storage.published_files`` is the same listing for Python
callers (a test checks that both agree). Whether a file still holds the bytes it was
published with is ``bfd verify``'s rule, ``bfd.storage.recorded`` (as light).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeAlias

from bfd.storage.recorded import in_tables, recorded_sha256, sha256_change

# The tables published per run as one version (bfd.storage.RUN_TABLES). Any other table of
# the catalog is read as every Parquet file below tables/<table>/.
RUN_TABLES: Final[tuple[str, ...]] = ("runs", "layers", "heads", "modes", "images")
POINTER_NAME: Final[str] = "published.json"
# The tables of audit events (bfd.storage.audits), one file per audit: what a file held.
EVENT_TABLES: Final[dict[str, str]] = {"audits": "audit event", "drift": "drift rows",
                                        "left_out": "left-out checkpoints record"}


@dataclass(frozen=True)
class TableFile:
    """One file the catalog reads: its path, its path relative to the store, its stat, the
    run it belongs to (None for a table not published per run), and what its run's pointer
    recorded of it when it was published, ``(size, mtime_ns, sha256)`` (None for a pointer
    written before it recorded them, and for the files of no pointer)."""

    path: str
    rel: str
    stat: os.stat_result
    run_id: str | None
    published: tuple[int, int, Any] | None = None


Listing: TypeAlias = dict[str, list[TableFile]]


class Note(NamedTuple):
    """A note on what a listing or a catalog left out: the run left out (None for an audit
    event file, which is no run's) and the line a user reads."""

    run_id: str | None
    text: str


class ListingChanged(Exception):
    """A file vanished while it was listed or read: a publish switched a pointer meanwhile."""


def _scan(folder: str, rel: str, out: list[tuple[str, str, os.stat_result]],
          unreadable: list[tuple[str, str, OSError]]) -> None:
    """Appends ``(path, path relative to the store, stat)`` of the Parquet files below
    ``folder``, skipping names that start with ``.`` or ``_``. Like ``Path.rglob`` it does not
    descend into symbolic links to folders; a file that goes while it is listed is left out.
    A folder or file this user may not read (another user's, made private by their umask) is
    appended to ``unreadable`` as ``(path, path relative to the store, error)``, and the
    listing goes on."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return
    except PermissionError as err:
        unreadable.append((folder, rel, err))
        return
    for entry in entries:
        if entry.name.startswith((".", "_")):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                _scan(entry.path, f"{rel}{entry.name}/", out, unreadable)
            elif entry.name.endswith(".parquet") and entry.is_file():
                out.append((entry.path, rel + entry.name, entry.stat()))
        except FileNotFoundError:
            continue
        except PermissionError as err:
            unreadable.append((entry.path, rel + entry.name, err))


def _pointers(root: str, notes: list[Note]) -> dict[str, dict]:
    """Every run's pointer, by run id; an unreadable one is noted and its run left out."""
    try:
        with os.scandir(os.path.join(root, "runs")) as it:
            names = sorted(e.name for e in it if not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return _pointers_of(root, names, notes)


def _pointers_of(root: str, names: list[str], notes: list[Note] | None = None
                 ) -> dict[str, dict]:
    runs = os.path.join(root, "runs")
    notes = [] if notes is None else notes
    out = {}
    for name in names:
        path = os.path.join(runs, name, POINTER_NAME)
        try:
            with open(path, encoding="utf-8") as f:
                pointer = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, ValueError) as err:
            notes.append(Note(name, f"run {name}: its publication pointer {path} cannot be "
                              f"read ({err}); the run is left out"))
            out[name] = {"tables": {}}
            continue
        if not isinstance(pointer, dict) or not isinstance(pointer.get("tables"), dict):
            notes.append(Note(name, f"run {name}: {path} is not a publication pointer; the run "
                              "is left out"))
            pointer = {"tables": {}}
        out[name] = pointer
    return out


def _legacy_scan(root: str, table: str, run_ids: Collection[str] | None,
                 out: list[tuple[str, str, os.stat_result]],
                 unreadable: list[tuple[str, str, OSError]]) -> None:
    """``_scan`` of the folders ``model=*/`` of ``tables/<table>/`` (the layout before
    versioned publishing; the run folders of the current layout are read through their
    pointers); with ``run_ids``, of only those runs' folders ``model=*/run_id=<r>/`` (files
    elsewhere are no run's and ``list_files`` leaves them out). Unreadable folders and files
    are appended to ``unreadable`` as by ``_scan``."""
    folder, rel = os.path.join(root, "tables", table), f"tables/{table}/"
    try:
        with os.scandir(folder) as it:
            models = sorted(e.name for e in it if e.name.startswith("model="))
    except (FileNotFoundError, NotADirectoryError):
        return
    except PermissionError as err:
        unreadable.append((folder, rel, err))
        return
    for model in models:
        # as _scan, which does not descend into symbolic links to folders
        if os.path.islink(os.path.join(folder, model)):
            continue
        if run_ids is None:
            _scan(os.path.join(folder, model), f"{rel}{model}/", out, unreadable)
            continue
        for run_id in sorted(run_ids):
            path = os.path.join(folder, model, f"run_id={run_id}")
            if not os.path.islink(path):
                _scan(path, f"{rel}{model}/run_id={run_id}/", out, unreadable)


def _legacy_run(rel: str) -> str | None:
    """The run of a path of the layout before versioned publishing,
    ``tables/<table>/model=<m>/run_id=<r>[/...]``; None for any other."""
    parts = rel.rstrip("/").split("/")
    if len(parts) >= 4 and parts[2].startswith("model=") and parts[3].startswith("run_id="):
        return parts[3].split("=", 1)[1]
    return None


def _reason(err: OSError) -> str:
    return err.strerror or " ".join(str(err).split())


def list_files(root: str, tables: tuple[str, ...], run_ids: Collection[str] | None = None,
               ) -> tuple[Listing, list[Note]]:
    """The files of each table that the catalog reads, and notes on what was left out.

    Args:
        root: The store directory.
        tables: The tables to list.
        run_ids: List only these runs' files of the tables published per run (their
            pointers and folders alone are read; the other tables as ever): the same files
            as the whole listing filtered to them.

    Raises:
        ListingChanged: A file named by a pointer is gone (a publish switched the pointer
            after it was read); list again.
    """
    notes: list[Note] = []
    pointers = (_pointers(root, notes) if run_ids is None
                else _pointers_of(root, sorted(run_ids), notes))
    listing: Listing = {}
    missing: dict[str, str] = {}
    # run -> (what, its path, why): a table file or folder this user may not read (another
    # user's, made private by their umask)
    denied: dict[str, tuple[str, str, str]] = {}
    for table in tables:
        files: list[TableFile] = []
        if table in RUN_TABLES:
            for run_id, pointer in pointers.items():
                rel = pointer["tables"].get(table)
                if rel is None:
                    continue
                if not in_tables(rel, table):  # outside the store's tables/: not read
                    missing[run_id] = os.path.join(root, str(rel))
                    continue
                path = os.path.join(root, rel)
                try:
                    files.append(TableFile(path, rel, os.stat(path), run_id,
                                           _published(pointer, table)))
                except FileNotFoundError as err:
                    # Old versions go only after the pointer has moved on: a file missing
                    # under an unchanged pointer is damage, not a publish.
                    if _pointers_of(root, [run_id]).get(run_id) != pointer:
                        raise ListingChanged(path) from err
                    missing[run_id] = path
                except PermissionError as err:
                    denied.setdefault(run_id, ("table file", path, _reason(err)))
            # The layout before versioned publishing: folders model=<m>/run_id=<r>/.
            legacy: list[tuple[str, str, os.stat_result]] = []
            unreadable: list[tuple[str, str, OSError]] = []
            _legacy_scan(root, table, run_ids, legacy, unreadable)
            for path, rel, err in unreadable:
                run_id = _legacy_run(rel)
                if run_id is None:  # a whole model= folder: its runs are unknown
                    notes.append(Note(None, f"folder {path} cannot be read ({_reason(err)}); "
                                      "the runs in it are left out of the SQL catalog"))
                elif run_id not in pointers:
                    what = "table file" if path.endswith(".parquet") else "table folder"
                    denied.setdefault(run_id, (what, path, _reason(err)))
            for path, rel, st in legacy:
                parts = rel.split("/")
                if len(parts) == 5 and parts[2].startswith("model=") and parts[3].startswith(
                        "run_id="):
                    run_id = parts[3].split("=", 1)[1]
                    if run_id not in pointers:
                        files.append(TableFile(path, rel, st, run_id))
        else:
            found: list[tuple[str, str, os.stat_result]] = []
            unreadable = []
            _scan(os.path.join(root, "tables", table), f"tables/{table}/", found, unreadable)
            files = [TableFile(path, rel, st, None) for path, rel, st in found]
            what = EVENT_TABLES.get(table, f"{table} table")
            for path, _, err in unreadable:
                notes.append(Note(None, f"{what} files in {path} cannot be read "
                                  f"({_reason(err)}); they are left out of the SQL catalog"))
        # The order of sorted Paths: by path components.
        files.sort(key=lambda f: f.rel.split("/"))
        listing[table] = files
    # A run of the old layout published meanwhile loses its old files after its pointer is
    # written: had that begun, part of them could be listed.
    legacy_runs = {f.run_id for files in listing.values() for f in files
                   if f.run_id is not None and f.run_id not in pointers}
    for run_id in legacy_runs:
        if os.path.exists(os.path.join(root, "runs", run_id, POINTER_NAME)):
            raise ListingChanged(run_id)
    for run_id, path in missing.items():
        notes.append(Note(run_id, f"table file {path} (run {run_id}) is missing; run {run_id} "
                          "is left out of the SQL catalog"))
    for run_id, (what, path, reason) in denied.items():
        if run_id not in missing:
            notes.append(Note(run_id, f"{what} {path} (run {run_id}) cannot be read "
                              f"({reason}); run {run_id} is left out of the SQL catalog"))
    listing = {table: [f for f in files if f.run_id not in missing and f.run_id not in denied]
               for table, files in listing.items()}
    return listing, notes


def _published(pointer: dict, table: str) -> tuple[int, int, Any] | None:
    """What ``pointer`` recorded of its file of ``table`` when it was published: ``(size,
    mtime_ns, sha256)`` (the sha256 as ``recorded_sha256`` reads it); None when it lacks any
    of them (written before they were kept) or holds a size or mtime of another form."""
    recorded = []
    for key in ("size", "mtime_ns"):
        values = pointer.get(key)
        recorded.append(values.get(table) if isinstance(values, dict) else None)
    size, mtime_ns = recorded
    sha256 = recorded_sha256(pointer, table)
    if type(size) is not int or type(mtime_ns) is not int or sha256 is None:
        return None
    return size, mtime_ns, sha256


def changed_files(listing: Listing) -> dict[str, str]:
    """The listed files that changed after they were published (path -> how): their size or
    mtime differ from what their pointer recorded (a stat, no read) and so do their bytes
    (their sha256, read only for those). A file of the same bytes with another mtime (a store
    copied without keeping times, a ``touch``) is not changed; a change that keeps both the
    size and the mtime is not seen (``bfd verify`` compares every file's sha256); nor is one
    of a file whose pointer recorded no size, mtime and sha256 (written before they were kept).

    Raises:
        ListingChanged: A file went while it was read (a publish switched its pointer).
    """
    changed = {}
    for files in listing.values():
        for f in files:
            if f.published is None:
                continue
            size, mtime_ns, sha256 = f.published
            if (f.stat.st_size, f.stat.st_mtime_ns) == (size, mtime_ns):
                continue
            try:
                change = sha256_change(f.path, sha256)  # bfd verify's rule (storage.recorded)
            except FileNotFoundError as err:
                raise ListingChanged(f.path) from err
            except OSError:
                continue  # the build's read names what is wrong with it
            if change is not None:
                changed[f.path] = change
    return changed


def leave_out(listing: Listing, bad: dict[str, str], problem: str = "cannot be read"
              ) -> tuple[Listing, list[Note]]:
    """The listing without the files ``bad`` (path -> reason: unreadable ones, or ``problem``
    says what else) and every other file of their runs (a run is shown whole or not at all),
    and a note per file left out."""
    runs = {f.run_id for files in listing.values() for f in files
            if f.path in bad and f.run_id is not None}
    notes: list[Note] = []
    for table, files in listing.items():
        for f in files:
            if f.path in bad and table in EVENT_TABLES:
                refused = ", and bfd audit refuses its series" if table == "audits" else ""
                notes.append(Note(None, f"{EVENT_TABLES[table]} file {f.path} cannot be read "
                                  f"({bad[f.path]}); it is left out of the SQL catalog"
                                  f"{refused}: move the file out of the store (what it held "
                                  "is lost)"))
            elif f.path in bad:
                whose = f"run {f.run_id}" if f.run_id else "no run"
                left = f"run {f.run_id} is" if f.run_id else "the file is"
                notes.append(Note(f.run_id, f"table file {f.path} ({whose}) {problem} "
                                  f"({bad[f.path]}); {left} left out of the SQL catalog"))
    kept = {table: [f for f in files if f.path not in bad and f.run_id not in runs]
            for table, files in listing.items()}
    return kept, notes
