"""Input files named on the command line: which suffixes a weights file may have, and the
sha256 of a file's bytes. Imports neither torch nor timm, so that a request can be keyed
without them (``bfd.tasks.request_key``).

A file is hashed once per process while it is unchanged: ``bfd audit`` keys a request
(``bfd.tasks.request_key``: the weights file and every image) before the flow's planner
builds the same request (``bfd.tasks.extract.prepare_run``), and the planner reuses those
digests. A digest is reused only for the same file (device and inode) with the same size,
modification and change times (``st_ctime_ns`` moves on every write, even one that sets
the modification time back). File systems stamp times from a coarse clock (a few ms on
Linux, up to 2 s on some), so two writes within one tick can leave the same stamp: as git
does for its index, a file changed less than ``SETTLED_NS`` before it is hashed, or while
it is, is not remembered.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Final

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin")

# Digests kept, the least recently used dropped first: about 0.2 KB each, so a listing of
# this many images costs some 25 MB; a longer one is hashed again as before.
CACHE_SIZE: Final[int] = 1 << 17

# How long ago a file must have last changed for its digest to be remembered.
SETTLED_NS: Final[int] = 2_000_000_000

_lock = threading.Lock()
_digests: OrderedDict[tuple[int, ...], str] = OrderedDict()
_bytes_hashed = 0


def bytes_hashed() -> int:
    """Bytes ``sha256_file`` has read in this process, for tests and benchmarks that check
    which files a command reads."""
    return _bytes_hashed


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def sha256_file(path: str | Path) -> str:
    """sha256 of the file's bytes, as 64 hex digits, read in blocks of 1 MiB (once per
    process while the file is unchanged: see the module docstring)."""
    global _bytes_hashed
    with open(path, "rb") as f:
        stamp = _stamp(os.fstat(f.fileno()))
        with _lock:
            digest = _digests.get(stamp)
            if digest is not None:
                _digests.move_to_end(stamp)
                return digest
        h = hashlib.sha256()
        n = 0
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            n += len(block)
        settled = (_stamp(os.fstat(f.fileno())) == stamp
                   and time.time_ns() - max(stamp[3:]) > SETTLED_NS)
    digest = h.hexdigest()
    with _lock:
        _bytes_hashed += n
        if settled:
            _digests[stamp] = digest
            if len(_digests) > CACHE_SIZE:
                _digests.popitem(last=False)
    return digest
