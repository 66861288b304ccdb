"""``bfd drop-activations``: free the disk a published run's activations take, keeping its
results, tables and audits.

The run's activation arrays (``bfd.zarr/<run>/<site>``: most of a store's bytes) and its
shard markers are removed; ``runs/<run>/activations_dropped.json`` says so. The run then reads
as a stats-only one (``kept_no_activations``): ``bfd verify`` checks its published tables and
model tensors, ``bfd decompose`` is refused with the command that stores the activations again,
and an extraction (or audit) of its request extracts every shard again, bit for bit, and
removes the note (``forget_dropped``). Its id is unchanged: the request is not touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from .paths import (
    DamagedStoreError,
    Store,
    legacy_table_files,
    read_json,
    run_lock,
    write_json_atomic,
)

DROPPED: Final[str] = "activations_dropped.json"


def dropped(store: Store, run_id: str) -> dict[str, Any] | None:
    """The note of a run whose activations were dropped (``dropped_at``, ``bytes``,
    ``sites``), or None: they were not (or were extracted again since)."""
    try:
        return read_json(store.run_dir(run_id) / DROPPED)
    except FileNotFoundError:
        return None
    except DamagedStoreError:
        return {}  # the note is damaged, the drop it records happened


def forget_dropped(store: Store, run_id: str) -> None:
    """Remove the note once the run's activations are extracted again (``prepare_run``,
    holding the run's lock)."""
    note = store.run_dir(run_id) / DROPPED
    if note.exists():  # unlink of a missing file fails on a read-only store (EROFS)
        note.unlink(missing_ok=True)


def _bytes(folder: Path) -> int:
    return sum(os.lstat(Path(d) / f).st_size for d, _, files in os.walk(folder) for f in files)


def drop_activations(store: Store, run_id: str) -> tuple[int, bool]:
    """Remove the activations of a published run (module docstring). A run dropped before
    has what a drop cut short left removed (its note is written first).

    Returns:
        The bytes freed, and whether the run was dropped before.

    Raises:
        ValueError: The run is not published (its activations are all it has), is stats-only
            (it kept none), its published table files are damaged or were published by an
            older bfd (lacking columns added since: kept to add them) (``bfd verify`` names
            them), or its Zarr part is kept elsewhere (``$BFD_ZARR_URL``).
        RunBusyError: Another process computes the run now.
        FileNotFoundError: No such run.
    """
    # here, not above: `dropped` is read by commands that import no xarray or Zarr (bfd runs)
    from .activations import TEMPLATE_ATTR, _open_group
    from .guarded import remove_node
    from .integrity import table_faults
    from .manifest import marker_files
    from .published import read_pointer
    from .runs import is_stats_only, read_request

    # an unknown run is named with the closest ones
    if is_stats_only(read_request(store, run_id).extra):
        raise ValueError(f"run {run_id} is stats-only (bfd audit --no-store-activations): it "
                         "kept no activations, nothing to free")
    if store.zarr_dir is None:
        raise ValueError(f"run {run_id}'s activations are kept in {store.zarr_path}, not on "
                         "this disk: remove them there")
    with run_lock(store, run_id):
        pointer = read_pointer(store, run_id)
        if pointer is None and legacy_table_files(store, run_id):
            # published before versioned publishing (no pointer; tables/<t>/model=<m>/
            # run_id=<run>/): its files lack the columns added since (trial 29: it was said
            # not published)
            from .republish import decompose_command

            raise ValueError(f"run {run_id}'s table files were published by an older bfd (the "
                             "layout before versioned publishing, without the columns added "
                             f"since): {decompose_command(store, run_id)} publishes it again "
                             "from its activations, which are kept until then")
        if pointer is None:
            raise ValueError(f"run {run_id} is not published: its activations are all it "
                             f"has; bfd decompose {run_id} --store {store.root} publishes its "
                             "results first")
        faults = table_faults(store, run_id)
        if faults and all(f.older for f in faults):
            from .republish import decompose_command

            raise ValueError(f"run {run_id}'s table files were published by an older bfd "
                             f"({faults[0]}): {decompose_command(store, run_id)} adds the "
                             "columns added since from its activations, which are kept until "
                             "then")
        if faults:
            raise ValueError(f"run {run_id}'s published table files are damaged ({faults[0]}"
                             f"; bfd verify {run_id} --store {store.root} lists them): its "
                             "activations are kept to publish them again")
        group = _open_group(store, run_id, "r")
        sites = list(group.attrs[TEMPLATE_ATTR]["sites"]) if group is not None \
            and TEMPLATE_ATTR in group.attrs else []
        arrays = [Path(store.zarr_path) / store.run_group(run_id) / site for site in sites]
        # a link to an array elsewhere frees nothing here (remove_node removes the link)
        freed = sum(_bytes(a) for a in arrays if a.is_dir() and not a.is_symlink())
        before = dropped(store, run_id) is not None
        # the note first: a drop cut short reads as dropped, not as activations damaged
        if not before:
            write_json_atomic(store.run_dir(run_id) / DROPPED, {
                "dropped_at": datetime.now(UTC).isoformat(), "bytes": freed, "sites": sites})
        for marker in marker_files(store, run_id).values():
            marker.unlink(missing_ok=True)
        for array in arrays:  # its metadata first: a Dataset reading it raises from then on
            remove_node(array)
    return freed, before


def check_keep(keep: int, option: str = "keep") -> None:
    """Refuses a retention that would keep no run's activations: the latest run's are always
    kept (its next audit may reuse them); ``option`` names it as the user gave it."""
    if keep < 1:
        raise ValueError(f"{option} must be at least 1 (the latest run's activations are "
                         f"kept); got {keep}")


def runs_past_keep(store: Store, series: str, keep: int, also_keep: str | None = None,
                   audits: Sequence[Mapping[str, Any]] | None = None) -> list[str]:
    """The runs of ``series`` whose activations a retention of ``keep`` drops, oldest first:
    those its complete audits name, less the ``keep`` latest of them (the runs of its latest
    audits in series order, each run counted once: a rollback's audit of an earlier run keeps
    that run), less any run that another series' ``keep`` latest hold, and less
    ``also_keep`` (the run just audited, which an audit of an earlier step puts before the
    latest). Runs whose activations are gone already, or were never kept (stats-only), are
    left out. ``audits``: the store's audits in series order (``read_audits``), when the
    caller read them already (one read for every series it retains).

    Raises:
        ValueError: ``keep`` is below 1 (``check_keep``).
    """
    from .audits import read_audits
    from .runs import is_stats_only, read_request

    check_keep(keep)
    latest: dict[str, list[str]] = {}  # per series, its runs by their latest audit, newest first
    for row in reversed(read_audits(store) if audits is None else audits):
        runs = latest.setdefault(row["series"], [])
        if row["status"] == "complete" and row["run_id"] and row["run_id"] not in runs:
            runs.append(row["run_id"])
    kept = {run for runs in latest.values() for run in runs[:keep]} | {also_keep}
    past = [run for run in reversed(latest.get(series, [])) if run not in kept]

    def holds_activations(run_id: str) -> bool:
        try:
            return (dropped(store, run_id) is None
                    and not is_stats_only(read_request(store, run_id).extra))
        except FileNotFoundError:  # the run is gone from the store
            return False
        except (ValueError, DamagedStoreError):  # its request is damaged: the drop says so
            return True

    return [run for run in past if holds_activations(run)]
