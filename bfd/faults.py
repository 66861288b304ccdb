"""What the ``bfd`` command says for an error it expects: one line, and an exit code.

Exit 2: a mistake in the request (a bad option, an unknown run, refused SQL); fix the command.
Exit 1: a fault of the environment (a read-only or full disk, an unreachable cluster, a
damaged store file); the line names the file or address at fault and what to do.

Exceptions are told apart by class name, so that the command's error path imports nothing
(DuckDB, torch, the store) that the failed command had not imported itself.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

REQUEST_ERROR = 2
ENVIRONMENT_ERROR = 1

_REQUEST_TYPES = ("ValueError", "RuntimeError")
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
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


def _os_error(err: OSError) -> tuple[int, str]:
    where = err.filename or "the store"
    reason = err.strerror or _one_line(err)
    if err.errno in _FULL:
        return ENVIRONMENT_ERROR, (f"no space left writing {where} ({reason}); free space and "
                                   "run the command again: completed work is kept")
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
