"""Where things live in a store (docs/layout.md), and the one atomic-write helper.

A store is a local directory. The Zarr part may live elsewhere (any fsspec URL) through
``zarr_url``; the plain files (run requests, shard markers, Parquet tables) stay local because
their atomicity rests on ``os.replace`` within one directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

STORE_ENV: Final[str] = "BFD_STORE"
ZARR_URL_ENV: Final[str] = "BFD_ZARR_URL"
DEFAULT_ROOT: Final[str] = "./bfd-store"

ZARR_NAME: Final[str] = "bfd.zarr"
RESULTS_GROUP: Final[str] = "results"
# What marks a folder as a store (docs/layout.md, "What makes a folder a store"): the first
# thing any command writes into one is one of these folders, so every store that any version
# of bfd wrote holds one.
STORE_ENTRIES: Final[tuple[str, ...]] = ("runs", "tables", ZARR_NAME, "request_keys")
# The same, as the store check's refusal and the reading commands' --store help say it.
STORE_ENTRIES_TEXT: Final[str] = (", ".join(f"{name}/" for name in STORE_ENTRIES[:-1])
                                  + f" or {STORE_ENTRIES[-1]}/")
# What reading a store writes into it (the SQL catalog, the dashboard): beside hidden files,
# these alone leave a folder a new, empty store.
_READER_ENTRIES: Final[tuple[str, ...]] = ("catalog", "dashboard")

# Path-safe and SQL-friendly; the same pattern run_id() produces.
_RUN_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_URL_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class DamagedStoreError(ValueError):
    """A file of the store cannot be read as what it should be (truncated, garbage, missing
    parts); the message names the file and what repairs it."""


class NotAStoreError(ValueError):
    """A folder given as the store is not one (it holds other files, and none of a store's)."""


class RunBusyError(RuntimeError):
    """Another process holds the run's lock (e.g. a concurrent decomposition of one run)."""


def validate_run_id(run_id: str) -> str:
    """Check that a run id is safe as a directory, Zarr group and partition name.

    Args:
        run_id: The id to check.

    Returns:
        The same id.

    Raises:
        ValueError: If it is empty, too long, starts with a dot or holds other characters
            than letters, digits, ``_``, ``.`` and ``-``.
    """
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id) or ".." in run_id:
        raise ValueError(
            f"invalid run_id {run_id!r}: expected 1-200 characters from [A-Za-z0-9_.-], "
            "starting with a letter or digit and without '..'"
        )
    return run_id


class Store:
    """The paths of one store, as laid out in docs/layout.md.

    Args:
        root: Local directory of the store (``file://`` URLs are accepted). Other URLs are
            refused: the plain files need a local file system; use ``zarr_url`` to put the
            Zarr part elsewhere.
        zarr_url: Optional location of the Zarr store (a path or any fsspec URL, e.g.
            ``s3://bucket/bfd.zarr``); defaults to ``<root>/bfd.zarr``.

    Raises:
        ValueError: If ``root`` is a non-local URL.
    """

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT, *, zarr_url: str | None = None):
        text = os.fspath(root)
        if text.startswith("file://"):
            text = text[len("file://") :]
        elif _URL_RE.match(text):
            raise ValueError(
                f"store root must be a local directory, got URL {text!r}; pass a local root and "
                "zarr_url=<fsspec URL> to keep the Zarr part remote"
            )
        self.root: Final[Path] = Path(text).expanduser().absolute()
        self._zarr_url: Final[str | None] = zarr_url.rstrip("/") if zarr_url else None

    def __fspath__(self) -> str:
        """The root's path: a ``Store`` goes wherever a store's path does (``os.PathLike``),
        e.g. ``bfd.queries.run_query(Store(root), ...)``."""
        return str(self.root)

    def __repr__(self) -> str:
        extra = f", zarr_url={self._zarr_url!r}" if self._zarr_url else ""
        return f"Store({str(self.root)!r}{extra})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Store)
            and self.root == other.root
            and self._zarr_url == other._zarr_url
        )

    def __hash__(self) -> int:
        return hash((self.root, self._zarr_url))

    @property
    def zarr_path(self) -> str:
        """The Zarr store: a local path or an fsspec URL, as zarr and xarray accept it."""
        return self._zarr_url or str(self.root / ZARR_NAME)

    @property
    def zarr_dir(self) -> Path | None:
        """The Zarr store's local directory; None when it is kept at a URL (``zarr_url``),
        whose disk this machine cannot measure, free or check file by file."""
        path = self.zarr_path
        return None if "://" in path else Path(path)

    @property
    def runs_dir(self) -> Path:
        """Directory holding one plain-file directory per run."""
        return self.root / "runs"

    @property
    def tables_dir(self) -> Path:
        """Directory holding the Parquet tables."""
        return self.root / "tables"

    def run_group(self, run_id: str) -> str:
        """Path of the run's activation group inside the Zarr store."""
        return validate_run_id(run_id)

    def results_group(self, run_id: str, version: str | None = None) -> str:
        """Path of a results group of the run inside the Zarr store: that of one published
        ``version``, or the single group of a store written before versioned publishing."""
        suffix = f"-{version}" if version is not None else ""
        return f"{validate_run_id(run_id)}/{RESULTS_GROUP}{suffix}"

    def run_dir(self, run_id: str) -> Path:
        """The run's plain-file directory (request, image manifest, shard markers)."""
        return self.runs_dir / validate_run_id(run_id)

    def published_pointer(self, run_id: str) -> Path:
        """The file naming the run's published version (``published.py``)."""
        return self.run_dir(run_id) / "published.json"

    def shards_dir(self, run_id: str) -> Path:
        """Directory of the run's shard completion markers."""
        return self.run_dir(run_id) / "shards"

    def table_dir(self, table: str) -> Path:
        """Directory of one Parquet table (its partitions lie below it)."""
        return self.tables_dir / table


def legacy_table_files(store: Store, run_id: str,
                       tables: Iterable[str] | None = None) -> dict[str, Path]:
    """The run's table files in the layout before versioned publishing, by table:
    ``tables/<table>/model=<m>/run_id=<run_id>/part-*.parquet``, the last by name where a
    table holds several; ``tables``: those tables' folders only (default: every folder under
    ``tables/``). What a run published without a pointer holds; ``bfd.storage.published``,
    ``integrity`` and ``methods`` read them by this one rule. Standard library only."""
    validate_run_id(run_id)
    names = ([p.name for p in store.tables_dir.glob("*") if p.is_dir()] if tables is None
             else tables)
    found = {}
    for table in names:
        files = sorted(store.table_dir(table).glob(f"model=*/run_id={run_id}/part-*.parquet"))
        if files:
            found[table] = files[-1]
    return found


def default_store() -> Store:
    """The store named by ``$BFD_STORE`` (else ``./bfd-store``) and ``$BFD_ZARR_URL``."""
    return Store(
        os.environ.get(STORE_ENV, DEFAULT_ROOT), zarr_url=os.environ.get(ZARR_URL_ENV) or None
    )


def check_store(root: str | os.PathLike[str]) -> None:
    """Refuse a folder that is not a store before a command reads it or writes into it (the SQL
    catalog, a dashboard): a store holds one of ``STORE_ENTRIES``; an empty folder, or one
    holding only hidden files and what reading commands write, is a new store, empty.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        NotAStoreError: ``root`` holds other files and none of ``STORE_ENTRIES``.
    """
    where = Path(root)
    if not where.is_dir():
        raise FileNotFoundError(f"store {str(where)!r} is not a directory; expected a BFD store")
    if any((where / name).is_dir() for name in STORE_ENTRIES):
        return
    try:
        with os.scandir(where) as it:
            others = sorted(e.name for e in it
                            if not e.name.startswith(".") and e.name not in _READER_ENTRIES)
    except OSError:
        return  # not listable: what reads it next says why
    if not others:
        return
    shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    left = ("; its catalog/ was written by an earlier bfd and may be deleted"
            if (where / "catalog" / "current.duckdb").is_file() else "")
    raise NotAStoreError(
        f"{where} is not a BFD store (it holds {shown}, but no {STORE_ENTRIES_TEXT}); "
        f"check --store or $BFD_STORE, or give an empty folder for a new store{left}")


def temp_name(path: Path) -> Path:
    """A unique hidden sibling of ``path`` for write-then-rename.

    The name starts with a dot and ends with ``.tmp``, so no glob of finished files
    (``*.json``, ``part-*.parquet``) ever matches it.
    """
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so that a rename in it survives a crash (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def keep_mode(new: str | os.PathLike, old: str | os.PathLike) -> None:
    """Gives ``new``, a file about to replace ``old``, every permission bit ``old`` has (its
    own, from the umask, stay): a store's shared file (a pointer, ``catalog/current.duckdb``,
    a dashboard page) replaced by a user whose umask is 077 stays as readable to the rest of
    the team as it was, and one a private umask made ``0600`` becomes readable again when a
    teammate replaces it. Nothing happens when ``old`` is not there or a mode cannot be set
    (the replace itself says what is wrong)."""
    try:
        old_mode = os.stat(old).st_mode & 0o777
        new_mode = os.stat(new).st_mode & 0o777
        if old_mode & ~new_mode:
            os.chmod(new, new_mode | old_mode)
    except OSError:
        pass


def atomic_write(path: Path, write: Callable[[BinaryIO], None], durable: bool = True) -> None:
    """Write a file so that readers see either the old file, the new one, or none.

    ``write`` fills a hidden temporary sibling of its own (two writers of one file at once
    each rename theirs), which is flushed to disk and renamed over ``path``; the directory
    entry is flushed too, so the rename survives a crash. The new file is created under the
    umask and keeps every permission bit of the file it replaces (``keep_mode``).

    Args:
        path: Destination file; its directory is created if missing.
        write: Writes the whole content to the binary file it is given.
        durable: False: no flush to disk (a file made again from the store when lost, as
            the dashboard's).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        keep_mode(tmp, path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON atomically (see ``atomic_write``); NaN and infinities are refused."""
    text = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False, ensure_ascii=False)
    atomic_write(path, lambda f: f.write((text + "\n").encode("utf-8")))


def read_json(path: Path) -> Any:
    """Read one JSON file.

    Raises:
        DamagedStoreError: If the file is not UTF-8 JSON (truncated, binary); names the file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedStoreError(f"{path} is damaged: not a JSON file ({e})") from e


# The lock of work on one run (extraction, decomposition, publishing by a flow or ``bfd
# decompose``): ``runs/<run_id>/.compute.lock`` (docs/layout.md, "Run files").
COMPUTE_LOCK: Final[str] = ".compute.lock"


class _Held:
    """This process's hold of one lock file: a thread lock (threads of one process take
    turns, as ``flock`` does not tell them apart once one holds it), the open file holding
    the ``flock`` and how deep the holding thread has entered it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.fd: int | None = None
        self.depth = 0


_HELD: dict[Path, _Held] = {}
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def held_lock(path: Path, *, busy: str, waiting: str,
              wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the exclusive ``flock`` of ``path`` (created, with its folder, when missing) for
    the block. Reentrant: a thread already holding it enters again at once (a flow that
    extracts then decomposes one run, ``audit-checkpoints`` around its audits); the kernel
    drops it with its holder, so a killed process leaves no stale lock.

    Args:
        busy: The line of the ``RunBusyError`` raised when another process (or thread)
            holds it and ``wait`` is None.
        waiting: The line ``wait`` is called with.
        wait: Called once with ``waiting`` when the lock is held elsewhere, before waiting
            for it; None: refuse at once (``busy``).

    Raises:
        RunBusyError: ``wait`` is None and another process (or thread) holds it.
    """
    with _HELD_GUARD:
        held = _HELD.setdefault(path, _Held())
    said = False
    if not held.lock.acquire(blocking=False):
        if wait is None:
            raise RunBusyError(busy)
        wait(waiting)
        said = True
        held.lock.acquire()
    try:
        if held.depth == 0:
            fd = _lock_file(path, must=wait is None)
            try:
                try:
                    if fd is not None:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if wait is None:
                        raise RunBusyError(busy) from None
                    if not said:
                        wait(waiting)
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                if fd is not None:
                    os.close(fd)
                raise
            held.fd = fd
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0:
                if held.fd is not None:
                    os.close(held.fd)  # releases the flock
                held.fd = None
    finally:
        held.lock.release()


def _lock_file(path: Path, must: bool) -> int | None:
    """The lock file opened (created with its folder when missing). A store this process
    cannot write (read-only, no permission): with ``must``, the error (a command that
    refuses a busy run fails at once, as its first write would); else the existing file
    opened read-only (``flock`` needs no write access), or None when there is none: no lock,
    as this process can change nothing there (its first write fails as before)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0o666 less the umask, as every other file of the store: a store shared by a group
        # (umask 002) lets each member take the locks of the runs another member made
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        if must or err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        try:
            return os.open(path, os.O_RDONLY)
        except OSError:
            return None


def lock_busy(path: Path) -> bool:
    """Whether another process holds the ``flock`` of ``path`` now, seen without writing:
    the file is opened read-only (none: nobody holds it) and a shared lock tried at once."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the shared lock taken
    return False


def run_lock(store: Store, run_id: str,
             wait: Callable[[str], None] | None = None) -> contextlib.AbstractContextManager:
    """Hold the run's lock (``runs/<run_id>/.compute.lock``, ``held_lock``) for the block: work
    on one run (extraction, decomposition, publishing, reading its results for a report) is
    done by one process at a time; one that finds another computing the run either waits
    for it, then reuses what it did, or is refused.

    Args:
        wait: Called with one line (``waiting for another process computing run ...``)
            when another process holds the lock, before waiting for it; None: refuse at once.

    Raises:
        RunBusyError: ``wait`` is None and another process holds it.
        OSError: If the lock file cannot be created (a read-only store).
    """
    path = store.run_dir(run_id) / COMPUTE_LOCK
    return held_lock(
        path, wait=wait,
        busy=f"run {run_id} is busy: another process is computing it (it holds {path}); wait "
             "for it to finish",
        waiting=f"waiting for another process computing run {run_id} (it holds {path}); its "
                "work is reused when it is done")


def run_busy(store: Store, run_id: str) -> bool:
    """Whether another process computes the run now (holds ``run_lock``); reads only."""
    return lock_busy(store.run_dir(run_id) / COMPUTE_LOCK)


def require_writable(root: str | os.PathLike[str]) -> None:
    """Fail at once, naming the folder, when ``root`` (or the folder it would be made in)
    cannot be written, instead of after minutes of work.

    Raises:
        OSError: With the folder as its filename (read-only file system, no permission; a
            folder that exists but takes no new file, as ``/proc``, whose "No such file or
            directory" is said as a permission error: EACCES).
    """
    where = Path(root)
    while not where.exists() and where != where.parent:
        where = where.parent
    probe = where / f".bfd-write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as e:
        if e.errno == errno.ENOENT and where.is_dir():
            raise OSError(errno.EACCES, f"{where} takes no new files ({e.strerror})",
                          str(where)) from None
        raise OSError(e.errno, e.strerror, str(where)) from None
    probe.unlink()
