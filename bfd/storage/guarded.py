"""Zarr reads of a local store that raise once what they read was removed.

A Dataset opened lazily (``open_results``, ``open_activations``) reads its chunks when their
values are asked for. Another process may meanwhile remove what it opened: a run published
again (``bfd decompose RUN`` with other options, an audit with other decompose options)
removes the previous results version's group; ``bfd drop-activations`` removes the run's
activation arrays. A chunk file that is not there reads as Zarr's fill value, NaN: the
Dataset silently read all-NaN (trial 19). Chunks are legitimately missing too (an all-NaN
chunk is not written; images not yet extracted), so a missing chunk alone proves nothing;
one whose array's metadata (``zarr.json``) is gone does: ``GuardedStore`` raises then.
``remove_node`` removes an array or group its metadata first, so that a read during the
removal raises too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zarr.storage import LocalStore

METADATA = "zarr.json"


class VersionRemovedError(FileNotFoundError):
    """What a lazily opened Dataset read was removed by another process since it was
    opened."""


def _array_of(key: str) -> str | None:
    """The array path of a chunk key (``<array>/c/0/1``, ``<array>/c`` of a 0-d array), or
    None for a metadata key."""
    if key.endswith("/c"):
        return key[:-2]
    array, sep, _ = key.rpartition("/c/")
    return array if sep else None


class GuardedStore(LocalStore):
    """A read-only ``LocalStore`` whose missing chunk raises ``VersionRemovedError`` when its
    array's metadata is gone too (module docstring); otherwise the fill value, as Zarr."""

    def _check(self, key: str) -> None:
        array = _array_of(key)
        if array is not None and not (self.root / array / METADATA).exists():
            raise VersionRemovedError(
                f"{self.root / array} was removed after this Dataset was opened (its run "
                "published again by another process, e.g. bfd decompose RUN with other "
                "options, or its activations dropped); open it again, or .load() what you "
                "read before another process may publish or drop the run")

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        got = await super().get(key, prototype, byte_range)
        if got is None:
            self._check(key)
        return got

    async def get_partial_values(self, prototype: Any,
                                 key_ranges: Iterable[tuple[str, Any]]) -> list[Any]:
        key_ranges = list(key_ranges)
        got = await super().get_partial_values(prototype, key_ranges)
        for (key, _), value in zip(key_ranges, got, strict=True):
            if value is None:
                self._check(key)
        return got


def reading(zarr_dir: Path | None, zarr_path: str) -> GuardedStore | str:
    """What ``xarray.open_zarr`` is given to read a store's Zarr part: a ``GuardedStore`` of
    a local one, the URL of another (``$BFD_ZARR_URL``) as it is."""
    return zarr_path if zarr_dir is None else GuardedStore(zarr_dir, read_only=True)


def remove_node(folder: Path) -> None:
    """Remove a local array or group folder whole, if it exists: first its metadata and its
    members' (so that a lazily opened Dataset reading it raises from then on, not once the
    removal reaches it), then the rest. A link (the folder, or a member) is removed as a link:
    what it points to is outside the store and never touched (trial 25: the metadata of an
    array a link pointed to, in another store, was deleted)."""
    if folder.is_symlink():
        folder.unlink(missing_ok=True)
        return
    members = [m for m in folder.glob(f"*/{METADATA}") if not m.parent.is_symlink()]
    for meta in (folder / METADATA, *members):
        try:
            os.unlink(meta)
        except (FileNotFoundError, NotADirectoryError):
            pass
    shutil.rmtree(folder, ignore_errors=True)
