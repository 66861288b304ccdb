"""The image files of a folder, walked once per process while the folder is unchanged.

``bfd audit`` lists its image folder up to three times: for the request key
(``bfd.tasks.request_key``), for the request check (``bfd.images.check_source``) and in the
flow's planner (``bfd.tasks.extract.prepare_run``). The first walk is kept (one folder, the
last walked) and reused while every folder of the tree has the same inode and modification
time: adding, removing or renaming an entry changes its folder's modification time, so a
new image, a new subfolder or a removed one is seen. The files' contents are not part of the
listing (``bfd.files.sha256_file`` sees a changed file). As in ``bfd.files``, a walk is kept
only when no folder of the tree changed within ``bfd.files.SETTLED_NS`` before it began:
file systems stamp times from a coarse clock, so a change just after a walk could leave a
folder's time as it was.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from bfd.files import SETTLED_NS

# The folder last walked: its root and the suffixes listed, (path, inode, mtime) of each
# folder in its tree, and the image files' posix paths relative to the root, sorted.
_lock = threading.Lock()
_last: tuple[tuple[Path, frozenset[str]], tuple[tuple[str, int, int], ...],
             tuple[str, ...]] | None = None
_walks = 0


def walks() -> int:
    """Folder walks ``list_folder`` did in this process, for tests and benchmarks."""
    return _walks


def _unchanged(stamps: tuple[tuple[str, int, int], ...]) -> bool:
    for path, ino, mtime in stamps:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if (st.st_ino, st.st_mtime_ns) != (ino, mtime):
            return False
    return True


def _walk(root: Path, suffixes: frozenset[str]) -> tuple[tuple[tuple[str, int, int], ...],
                                                         tuple[str, ...]]:
    """The folders' stamps and the image files (by suffix, any case; files or links to
    files; hidden files and folders skipped; links to folders not followed, as
    ``Path.rglob``) of ``root``'s tree."""
    stamps, files = [], []
    for folder, dirs, names in os.walk(root):
        st = os.stat(folder)
        stamps.append((folder, st.st_ino, st.st_mtime_ns))
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for name in names:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in suffixes:
                continue
            if os.path.isfile(os.path.join(folder, name)):  # a link to a file counts
                files.append(prefix + name)
    return tuple(stamps), tuple(sorted(files))


def list_folder(root: Path, suffixes: frozenset[str]) -> list[tuple[str, str]]:
    """``(relative posix path, absolute path)`` of the image files below ``root`` (absolute),
    sorted by relative path; walked again only when a folder of the tree changed (module
    docstring). Paths as strings: a ``Path`` each would cost more than the reuse saves."""
    global _last, _walks
    with _lock:
        last = _last
    if last is not None and last[0] == (root, suffixes) and _unchanged(last[1]):
        files = last[2]
    else:
        started = time.time_ns()
        stamps, files = _walk(root, suffixes)
        settled = all(started - mtime > SETTLED_NS for _, _, mtime in stamps)
        with _lock:
            _walks += 1
            _last = ((root, suffixes), stamps, files) if settled else None
    base = os.path.join(str(root), "")
    if os.sep == "/":
        return [(rel, base + rel) for rel in files]
    return [(rel, base + rel.replace("/", os.sep)) for rel in files]
