"""Input files named on the command line: which suffixes a weights file may have, and the
sha256 of a file's bytes. Imports neither torch nor timm, so that a request can be keyed
without them (``bfd.tasks.request_key``)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin")

_lock = threading.Lock()
_bytes_hashed = 0


def bytes_hashed() -> int:
    """Bytes ``sha256_file`` has read in this process, for tests and benchmarks that check
    which files a command reads."""
    return _bytes_hashed


def sha256_file(path: str | Path) -> str:
    """sha256 of the file's bytes, as 64 hex digits, read in blocks of 1 MiB."""
    global _bytes_hashed
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            n += len(block)
    with _lock:
        _bytes_hashed += n
    return h.hexdigest()
