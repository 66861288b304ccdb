"""What the ``bfd`` command says for an error it expects: one line, and an exit code.

Exit 2: a mistake in the request (a bad option, an unknown run, refused SQL); fix the command.
Exit 1: a fault of the environment (a read-only or full disk, an unreachable cluster, a
damaged store file); the line names the file or address at fault and what to do.

Exceptions are told apart by class name, so that the command's error path imports nothing
(DuckDB, torch, the store) that the failed command had not imported itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

REQUEST_ERROR = 2
ENVIRONMENT_ERROR = 1

_REQUEST_TYPES = ("ValueError", "RuntimeError")
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_DENIED = (errno.EACCES, errno.EPERM)
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _names(err: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(err).__mro__}


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# The statement DuckDB quotes under its message (``LINE 1: SELECT ...``) and the caret line
# under it: where in the statement, not what is wrong.
_QUOTED = re.compile(r"LINE \d+:|\s*\^+\s*$")


def duckdb_line(text: object) -> str:
    """A DuckDB error in one line: its message and the hints on the lines after it (``Did you
    mean "layers"?``, ``Candidate bindings: "frac_pos", ...``, ``Either add it to the GROUP BY
    list, ...``), without the statement and caret it quotes; a line after one ending in ``.``,
    ``!`` or ``?`` follows with a space, any other after ``; ``."""
    out = ""
    for line in str(text).strip().splitlines():
        if _QUOTED.match(line) or not line.strip():
            continue
        line = " ".join(line.split())
        out += line if not out else (" " if out.endswith((".", "!", "?")) else "; ") + line
    return out


def _duckdb(err: BaseException) -> tuple[int, str]:
    first = duckdb_line(err) or type(err).__name__
    if {"IOException", "PermissionException", "OutOfMemoryException"} & _names(err):
        return ENVIRONMENT_ERROR, f"{first} (see bfd verify for a damaged table file)"
    return REQUEST_ERROR, f"SQL: {first}"


def _file_in_the_way(path: str) -> str | None:
    """The file among ``path`` and its parents that stands where a folder should be."""
    for candidate in (Path(path), *Path(path).parents):
        if candidate.is_file():
            return str(candidate)
    return None


def _cannot_read(path: str) -> bool:
    """Whether this user may not read ``path`` (a folder: list and enter it), or reach it (a
    folder above it that it may not enter): a permission error on it was of a read, or of a
    listing. A path it may read, or one that is not there (a file being made), is not: the
    error was of a write."""
    try:
        st = os.stat(path)
    except PermissionError:
        return True  # a folder above it cannot be entered
    except OSError:
        return False
    mode = os.R_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)
    effective = os.access in os.supports_effective_ids
    return not os.access(path, mode, effective_ids=effective)


def _os_error(err: OSError) -> tuple[int, str]:
    where = err.filename or "the store"
    reason = err.strerror or _one_line(err)
    if err.errno in _FULL:
        return ENVIRONMENT_ERROR, (f"no space left writing {where} ({reason}); free space and "
                                   "run the command again: completed work is kept")
    if err.errno in _DENIED and err.filename and _cannot_read(str(err.filename)):
        return ENVIRONMENT_ERROR, (f"cannot read {where}: {reason}; this user may not read it: "
                                   "its owner can make it readable (chmod -R g+rX, or o+rX)")
    if err.errno in _READ_ONLY:
        return ENVIRONMENT_ERROR, (f"cannot write {where}: {reason}; make it writable or "
                                   "choose another --store (or --out)")
    if err.errno in (errno.ENOTDIR, errno.EEXIST) and err.filename:
        blocker = _file_in_the_way(err.filename)
        if blocker:
            return ENVIRONMENT_ERROR, (f"{blocker} is a file where a folder is expected; move "
                                       "it away or choose another --store")
    if err.errno == errno.EISDIR:
        return ENVIRONMENT_ERROR, f"{where} is a folder where a file is expected; move it away"
    if err.errno is None and not err.filename:
        return ENVIRONMENT_ERROR, _one_line(err)
    return ENVIRONMENT_ERROR, f"{where}: {reason}"


class StoreWriteError(OSError):
    """A full or read-only disk met while a flow wrote its store (``store_faults``): its text
    is one line naming the store (and the file, where known) and what to do; its errno and
    strerror are those of the error it replaces, its filename the store's root (``describe``
    says it as the CLI says a disk's fault, naming that store)."""

    def __init__(self, code: int, strerror: str, filename: str, line: str) -> None:
        super().__init__(code, strerror, filename)
        self.line = line

    def __str__(self) -> str:
        return self.line

    def __reduce__(self):  # pickled (a Dask worker's, Prefect's result): the same error
        return type(self), (self.errno, self.strerror, self.filename, self.line)


_ERRNO_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)


def _disk_errno(err: BaseException) -> int | None:
    """The errno of a full or read-only disk that ``err`` is (an ``OSError``; pyarrow's keep
    it in their text only), else None."""
    if not isinstance(err, OSError):
        return None
    code = err.errno
    if code is None:
        found = _ERRNO_TEXT.search(str(err))
        code = int(found.group(1)) if found else None
    return code if code in _FULL + _READ_ONLY else None


def store_fault(err: BaseException, root: str) -> StoreWriteError | None:
    """``err`` (or an error it was raised from) as a ``StoreWriteError`` of the store at
    ``root``, when it is a full or read-only disk there: no space left anywhere (the file
    named, where not in the store), or a read-only or unwritable file in the store; else None
    (also for bfd's own errors, which say it already: ``NotEnoughSpaceError``, a
    ``StoreWriteError``). Trial 26, F7: a flow's failure was the bare
    ``OSError: [Errno 28] No space left on device`` in Prefect and ``bfd serve``'s line."""
    found: BaseException | None = err
    while found is not None and _disk_errno(found) is None:
        found = found.__cause__
    if found is None or (type(found).__module__ or "").startswith("bfd"):
        return None  # bfd's own (NotEnoughSpaceError, StoreWriteError) say it already
    assert isinstance(found, OSError)
    code = _disk_errno(found)
    assert code is not None
    reason = found.strerror or os.strerror(code)
    file = found.filename if isinstance(found.filename, str) else None
    inside = file is not None and _inside(file, root)
    if code in _READ_ONLY and file is not None and not inside:
        return None  # a file elsewhere (an image, a checkpoint) that cannot be written
    if code in _DENIED and file is not None and _cannot_read(file):
        return None  # a read refused (another user's private file): not the disk's fault
    rel = os.path.relpath(file, root) if file is not None and inside else "."
    at = f", writing {rel}" if rel != "." else ""
    if code in _FULL:
        where = f"the disk of {file}" if file is not None and not inside else f"store {root}"
        line = (f"no space left on {where} ({reason}{at}); free space there and run it again: "
                "completed work is kept and a rerun resumes from it")
    else:
        line = (f"cannot write store {root} ({reason}{at}); make it writable or give the run "
                "another store: completed work is kept")
    return StoreWriteError(code, reason, root, line)


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == \
            os.path.abspath(root)
    except ValueError:
        return False


@contextlib.contextmanager
def store_faults(root: str) -> Iterator[None]:
    """A flow's work on the store at ``root``: a full or read-only disk met there is raised as
    a ``StoreWriteError`` (``store_fault``), from the error it replaces; anything else as it
    was. Nothing is undone: what was completed stays, as before."""
    try:
        yield
    except Exception as err:
        fault = store_fault(err, root)
        if fault is None:
            raise
        raise fault from err


def describe(err: BaseException) -> tuple[int, str] | None:
    """The exit code and one-line message for an expected error; None for anything else (a
    bug, whose traceback should show)."""
    names = _names(err)
    module = type(err).__module__ or ""
    if {"DamagedStoreError", "RunBusyError", "NotEnoughSpaceError"} & names:
        return ENVIRONMENT_ERROR, _one_line(err)
    if module.startswith(("duckdb", "_duckdb")):
        return _duckdb(err)
    if "ReadOnlyError" in names or "FileNotFoundError" in names:
        return REQUEST_ERROR, _one_line(err)
    if isinstance(err, OSError):
        return _os_error(err)
    if "RuntimeError" in names and str(err).startswith("Failed to reach API at"):  # Prefect's
        return ENVIRONMENT_ERROR, (f"{_one_line(err).rstrip('.')}: no Prefect server answers "
                                   "there; start it (prefect server start), or unset "
                                   "PREFECT_API_URL and bfd starts a temporary one itself")
    if names & set(_REQUEST_TYPES):
        return REQUEST_ERROR, _one_line(err)
    return None
