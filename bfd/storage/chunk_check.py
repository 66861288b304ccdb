"""``bfd verify``'s read of a run's chunk files: every chunk read whole, and each image
marked ok tested for non-finite values on the bits, on several threads."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from .paths import Store


def finite_rows(block: np.ndarray) -> np.ndarray:
    """Whether each row of ``block`` (its first axis) is finite, tested on the bits in two
    read-only passes: a float is +inf or NaN exactly when its bits, read as a signed integer,
    are at least those of +inf, and -inf or NaN when, read as unsigned, they are at least those
    of -inf (several times faster than ``np.isfinite``, on float16 most of all). Shared by
    ``bfd verify`` and the extraction's check of what it stores."""
    rows = block.reshape(len(block), -1)
    itemsize = rows.dtype.itemsize
    if rows.dtype.kind != "f" or itemsize not in (2, 4, 8):
        return np.isfinite(rows).all(-1)
    order = rows.dtype.str[0]  # the integers read the bits in the floats' byte order
    signed, unsigned = f"{order}i{itemsize}", f"{order}u{itemsize}"
    native = rows.dtype.newbyteorder("=")  # the bits' value as integers, whatever the order
    inf = int(np.array(np.inf, native).view(f"i{itemsize}"))
    minus_inf = int(np.array(-np.inf, native).view(f"u{itemsize}"))
    return ((rows.view(signed).max(-1) < inf) & (rows.view(unsigned).max(-1) < minus_inf))


class ChunkChecker:
    """Reads chunks of one array and tells which images hold a non-finite value, reusing its
    buffer: fresh arrays per chunk cost more in page faults than the read itself. One per
    reading thread."""

    def __init__(self, array: zarr.Array, raw: bool):
        self.array, self.raw = array, raw
        self.dtype = array.dtype.newbyteorder("<") if raw else array.dtype
        if raw:
            self.buffer = np.empty(array.chunks, dtype=self.dtype)
            self.bytes = memoryview(self.buffer.view(np.uint8).reshape(-1))

    def read(self, path: Path, layer: int, lo: int, hi: int) -> np.ndarray:
        """Images lo:hi of one layer's chunk: straight from the file when stored uncompressed
        (no decode), through zarr otherwise."""
        if not self.raw:
            return np.asarray(self.array[layer, lo:hi])
        with open(path, "rb", buffering=0) as f:
            n = f.readinto(self.bytes)
            if n != len(self.bytes) or f.read(1):
                raise ValueError(f"chunk file has another size than {len(self.bytes)} bytes")
        start = (lo // self.array.chunks[1]) * self.array.chunks[1]
        return self.buffer[0, lo - start:hi - start]


# Chunks read and checked at once: the reads of some overlap the finiteness test of others
# (numpy and file reads release the GIL), and a disk is kept busy with several reads.
READ_THREADS = 4


@dataclass(frozen=True)
class ChunkJob:
    """One chunk file of a shard to read and check."""

    shard: int
    site: str
    layer: int
    chunk: int
    lo: int
    hi: int
    ok: np.ndarray  # whether each of images lo:hi is marked ok


class ChunkVerifier:
    """Checks chunk jobs on several threads, each with its own buffers."""

    def __init__(self, store: Store, group: zarr.Group, sites: list[str], raw: bool):
        self.zarr_root = Path(store.zarr_path)
        self.arrays = {site: group[site] for site in sites}
        self.raw = {site: raw and not a.compressors and not a.filters
                    for site, a in self.arrays.items()}
        self.layer_ids = [int(v) for v in group["layer"][:]]
        self.local = threading.local()

    def jobs(self, k: int, marker: dict) -> Iterator[ChunkJob]:
        """The chunks of shard ``k`` (its marker gives its images and their status)."""
        start, stop = marker["start"], marker["stop"]
        ok = np.array([r.get("status") == "ok" for r in marker["images"]], dtype=bool)
        for site, array in self.arrays.items():
            ipc = array.chunks[1]
            for layer in range(array.shape[0]):
                for c in range(start // ipc, math.ceil(stop / ipc)):
                    lo, hi = max(start, c * ipc), min(stop, (c + 1) * ipc)
                    yield ChunkJob(k, site, layer, c, lo, hi, ok[lo - start:hi - start])

    def _checker(self, site: str) -> ChunkChecker:
        mine = self.local.__dict__.setdefault("checkers", {})
        if site not in mine:
            mine[site] = ChunkChecker(self.arrays[site], self.raw[site])
        return mine[site]

    def check(self, job: ChunkJob):  # noqa: ANN201 - a Fault (bfd.storage.integrity's)
        """Read one chunk: readable, and finite for the images marked ``ok``.

        Returns:
            None when it is, else its ``Fault``: the chunk file, what is wrong, the shard.
        """
        from .integrity import Fault

        checker = self._checker(job.site)
        array = checker.array
        path = self.zarr_root / array.path / array.metadata.encode_chunk_key(
            (job.layer, job.chunk, 0, 0))
        at = {"shard": job.shard, "array": str(self.zarr_root / array.path),
              "layer": self.layer_ids[job.layer]}
        try:
            block = checker.read(path, job.layer, job.lo, job.hi)
        except Exception as e:  # noqa: BLE001 - any decoding failure is the fault
            return Fault(str(path), f"unreadable ({' '.join(str(e).split())})",
                         kind="chunk files unreadable", **at)
        bad = np.flatnonzero(job.ok & ~finite_rows(block))
        if not len(bad):
            return None
        return Fault(str(path), f"non-finite values in images "
                     f"{[int(job.lo + i) for i in bad[:5]]} of layer "
                     f"{self.layer_ids[job.layer]} ({job.site})",
                     kind="chunk files with non-finite values", **at)
