"""Whether a published table file still holds the bytes its publish wrote: the one rule that
compares a file's sha256 with the one its run's pointer (``runs/<run_id>/published.json``,
``bfd.storage.published``) recorded of it.

Every reader of a published run follows it: ``bfd verify`` (``bfd.storage.integrity``, through
``changed_since_published``), ``bfd runs`` (``bfd.storage.unpublished``: a damaged run) and the
SQL catalog (``bfd.queries.listing.changed_files``: a run left out). It imports the standard
library and ``bfd.files`` only (no xarray, Zarr, torch, timm or Prefect), so that the reading
commands check as ``bfd verify`` does without loading what they must not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bfd.files import sha256_file


def in_tables(rel: object, table: str) -> bool:
    """Whether a pointer's path of ``table``'s file (relative to the store) lies in the
    store's ``tables/<table>/``, as every publish writes it: not absolute, no ``..``. Every
    reader of a pointer follows it, so that an edited pointer reads no file outside the store
    (trial 25: the catalog read a Parquet file named by ``../elsewhere``)."""
    if not isinstance(rel, str) or "\\" in rel or "\x00" in rel:
        return False
    parts = rel.split("/")
    return len(parts) > 2 and parts[:2] == ["tables", table] and not {"", ".", ".."} & set(
        parts)


def recorded_sha256(pointer: dict[str, Any], table: str) -> Any:
    """What ``pointer`` recorded as the sha256 of its file of ``table``; None when it recorded
    none (a pointer written before they were kept, or a table not in its record). Any other
    value is a record: one that is no file's sha256 (not 64 hex digits) matches no file."""
    values = pointer.get("sha256")
    return values.get(table) if isinstance(values, dict) else None


def sha256_change(path: str | Path, recorded: Any) -> str | None:
    """How the bytes of the file ``path`` differ from those whose sha256 ``recorded`` is, in
    a few words (``sha256 <12 digits>..., published.json records <12 digits>...``); None when
    they are those bytes, or when ``recorded`` is None (nothing recorded: nothing to compare).

    Raises:
        OSError: If the file cannot be read (FileNotFoundError when it is gone).
    """
    if recorded is None:
        return None
    now = sha256_file(path)
    if now == recorded:
        return None
    return f"sha256 {now[:12]}..., published.json records {str(recorded)[:12]}..."


def changed_since_published(pointer: dict[str, Any], table: str, path: str | Path
                            ) -> str | None:
    """Why the published file ``path`` of ``table`` no longer holds the bytes its publish
    wrote, in a few words (its sha256 differs from the pointer's: ``sha256_change``), or None
    when it holds them or the pointer records no sha256 of it (written before they were kept).

    Raises:
        OSError: If the file cannot be read.
    """
    change = sha256_change(path, recorded_sha256(pointer, table))
    return None if change is None else f"changed since it was published ({change})"
