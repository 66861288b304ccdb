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

# Image formats Pillow reads whose suffixes bfd does not list (bfd.images.IMAGE_SUFFIXES):
# a folder holding such files is said to (``left_out``), as are links to folders, which the
# walk does not follow.
OTHER_IMAGE_SUFFIXES = frozenset({".avif", ".jfif", ".jpe", ".jp2", ".j2k", ".jpx", ".tga",
                                  ".heic", ".heif", ".ico", ".psd", ".jxl", ".qoi", ".dds",
                                  ".pcx", ".sgi", ".icns"})

# What a walk found: the image files' posix paths relative to the root, sorted, and what it
# left out of them (links to folders, files of OTHER_IMAGE_SUFFIXES), each sorted.
Found = tuple[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]]

# The folder last walked: its root and the suffixes listed, (path, inode, mtime) of each
# folder in its tree, and what it found.
_lock = threading.Lock()
_last: tuple[tuple[Path, frozenset[str]], tuple[tuple[str, int, int], ...], Found] | None = None
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
                                                         Found]:
    """The folders' stamps and the image files (by suffix, any case; files or links to
    files; hidden files and folders skipped; links to folders not followed, as
    ``Path.rglob``) of ``root``'s tree, with the links to folders and the files of
    ``OTHER_IMAGE_SUFFIXES`` it left out."""
    stamps, files, links, others = [], [], [], []
    for folder, dirs, names in os.walk(root):
        st = os.stat(folder)
        stamps.append((folder, st.st_ino, st.st_mtime_ns))
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        links += [prefix + d for d in dirs if os.path.islink(os.path.join(folder, d))]
        for name in names:
            suffix = os.path.splitext(name)[1].lower()
            if name.startswith("."):
                continue
            if suffix in OTHER_IMAGE_SUFFIXES and suffix not in suffixes:
                others.append(prefix + name)
            elif suffix in suffixes and os.path.isfile(os.path.join(folder, name)):
                files.append(prefix + name)  # a link to a file counts
    return tuple(stamps), (tuple(sorted(files)), (tuple(sorted(links)), tuple(sorted(others))))


def _found(root: Path, suffixes: frozenset[str]) -> Found:
    """What the walk of ``root`` finds, walked again only when a folder of the tree changed
    (module docstring)."""
    global _last, _walks
    with _lock:
        last = _last
    if last is not None and last[0] == (root, suffixes) and _unchanged(last[1]):
        return last[2]
    started = time.time_ns()
    stamps, found = _walk(root, suffixes)
    settled = all(started - mtime > SETTLED_NS for _, _, mtime in stamps)
    with _lock:
        _walks += 1
        _last = ((root, suffixes), stamps, found) if settled else None
    return found


def left_out(root: Path, suffixes: frozenset[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The links to folders (not followed) and the files of ``OTHER_IMAGE_SUFFIXES`` (not
    listed) below ``root``, each as relative posix paths, sorted: what a user may have meant
    as images and ``list_folder`` leaves out."""
    return _found(root, suffixes)[1]


def list_folder(root: Path, suffixes: frozenset[str]) -> list[tuple[str, str]]:
    """``(relative posix path, absolute path)`` of the image files below ``root`` (absolute),
    sorted by relative path; walked again only when a folder of the tree changed (module
    docstring). Paths as strings: a ``Path`` each would cost more than the reuse saves."""
    files = _found(root, suffixes)[0]
    base = os.path.join(str(root), "")
    if os.sep == "/":
        return [(rel, base + rel) for rel in files]
    return [(rel, base + rel.replace("/", os.sep)) for rel in files]
