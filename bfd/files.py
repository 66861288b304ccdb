"""Input files named on the command line: which suffixes a weights file may have, and the
sha256 of a file's bytes. Imports neither torch nor timm, so that a request can be keyed
without them (``bfd.tasks.request_key``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin")


def sha256_file(path: str | Path) -> str:
    """sha256 of the file's bytes, as 64 hex digits, read in blocks of 1 MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
