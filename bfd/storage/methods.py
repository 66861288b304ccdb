"""Which method computed a run's published results (``bfd.core.method``), read from its
pointer (``runs/<run_id>/published.json``, ``method``) with the standard library only: the
checks of ``bfd audit-checkpoints`` with nothing to do load no xarray or Zarr
(``bfd.cli_reuse``)."""

from __future__ import annotations

from bfd.core.method import UNRECORDED_METHOD, method_of

from .paths import DamagedStoreError, Store, legacy_table_files, read_json, validate_run_id


def published_method(store: Store, run_id: str) -> int | None:
    """The method version of the run's published results: its pointer's ``method``; 1
    (``UNRECORDED_METHOD``) for a run published before methods were recorded (a pointer
    without one, or the layout before versioned publishing: no pointer, table files under
    ``tables/<t>/model=*/run_id=<run>/``); None when the run is not published, or its pointer
    does not read (``bfd.storage.read_pointer`` says so where it matters: the run is
    published again, by the installed method)."""
    validate_run_id(run_id)
    path = store.published_pointer(run_id)
    try:
        pointer = read_json(path)
    except FileNotFoundError:
        return UNRECORDED_METHOD if legacy_table_files(store, run_id) else None
    except (OSError, DamagedStoreError):
        return None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("tables"), dict):
        return None
    return method_of(pointer.get("method"))
