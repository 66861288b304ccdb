"""What publishing a run again must keep of its previous publication, read from whatever of
it still reads when some of its files are damaged (docs/layout.md, Publishing): the
decomposition options it was published with (so that ``bfd verify`` prints a repair command
that gives the same figures) and the time it was first published (``runs.created_at``)."""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pyarrow.parquet as pq
import zarr

from .paths import Store
from .published import _legacy_files, read_pointer
from .recorded import changed_since_published
from .results import results_groups
from .tables import RUN_TABLES

# The decomposition options that change a run's results, by their ``bfd decompose`` flag
# (device and images_per_task only say where and in what pieces it ran).
RESULT_FLAGS: Final[dict[str, str]] = {
    "prefix": "--prefix", "seed": "--control-seed", "compute_dtype": "--compute-dtype",
    "jackknife_groups": "--jackknife-groups", "ci_target": "--ci-target"}
_CHECK_IMAGES_DEFAULT: Final[int] = 2  # bfd.tasks.options.DecomposeOptions; no flag sets it
# A version name (bfd.storage.published.new_version): its UTC time, then random digits.
_VERSION: Final[re.Pattern[str]] = re.compile(r"(\d{8}T\d{12})Z[0-9a-f]+$")


def _run_files(store: Store, table: str, run_id: str, versions: bool = True) -> list[Path]:
    """Every file of the run's ``table`` on disk: the published version's, those of other
    versions a killed publish left, and the old layout's (``versions=False``: the old
    layout's only)."""
    folder = store.table_dir(table) / run_id
    found = sorted(folder.glob("part-*.parquet")) if versions and folder.is_dir() else []
    legacy = _legacy_files(store, run_id).get(table)
    return found + ([legacy] if legacy is not None else [])


def _ever_published(store: Store, run_id: str) -> bool:
    """Whether the run's versioned files may hold a published version: only when it has a
    pointer (read or not). A publish writes its pointer last, so a run without one has only
    the files of publishes killed before they switched it: never published."""
    return store.published_pointer(run_id).exists()


def _runs_rows(store: Store, run_id: str, versions: bool = True) -> list[dict[str, Any]]:
    """The run's rows in every one of its ``runs`` files that reads, the published one first
    (left out when it no longer holds the bytes it was published with); ``versions``: see
    ``_run_files``."""
    files = _run_files(store, "runs", run_id, versions)
    try:
        pointer = read_pointer(store, run_id) or {}
    except ValueError:
        pointer = {}
    rel = pointer.get("tables", {}).get("runs")
    if rel is not None and store.root / rel in files:
        files.remove(store.root / rel)
        try:
            changed = changed_since_published(pointer, "runs", store.root / rel)
        except OSError:
            changed = "unreadable"
        if not changed:
            files.insert(0, store.root / rel)
    rows = []
    for path in files:
        try:
            rows += [r for r in pq.read_table(path).to_pylist() if r.get("run_id") == run_id]
        except (OSError, ValueError):  # pyarrow's errors of a damaged file are of these kinds
            continue
    return rows


def published_options(store: Store, run_id: str) -> tuple[dict[str, Any] | None, str]:
    """The decomposition options the run was published with, and where they were read: its
    ``runs`` row's ``config_json`` (``"decompose"``), else the attrs of its results group
    (the published one first). ``(None, "")`` when no copy reads."""
    for row in _runs_rows(store, run_id):
        try:
            options = json.loads(row.get("config_json") or "{}").get("decompose")
        except (ValueError, AttributeError):
            continue
        if isinstance(options, dict) and options:
            return options, "its runs table file"
    try:
        published = (read_pointer(store, run_id) or {}).get("results")
    except ValueError:
        published = None
    groups = sorted(results_groups(store, run_id), reverse=True)  # newest version first
    for group in ([published] if published else []) + [g for g in groups if g != published]:
        try:
            attrs = dict(zarr.open_group(store.zarr_path, path=group, mode="r",
                                         zarr_format=3).attrs)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if all(key in attrs for key in RESULT_FLAGS):
            return attrs, "its results group's attrs"
    return None, ""


def decompose_command(store: Store, run_id: str) -> str:
    """The ``bfd decompose`` command line that publishes the run again with the options that
    change its results as it was published with them, or a sentence saying no copy of them
    reads."""
    base = f"bfd decompose {run_id} --store {shlex.quote(str(store.root))}"
    options, _ = published_options(store, run_id)
    if options is None:
        return (f"{base} (no copy of the decompose options the run was published with reads: "
                "give those it was published with, else its figures change)")
    flags = " ".join(f"{flag} {shlex.quote(str(options[key]))}"
                     for key, flag in RESULT_FLAGS.items() if key in options)
    command = f"{base} {flags}"
    check = options.get("check_images", _CHECK_IMAGES_DEFAULT)
    if check != _CHECK_IMAGES_DEFAULT:
        command += (f" (it was published with check_images={check}, which bfd decompose "
                    f"cannot set: its reconstruction check is made on {_CHECK_IMAGES_DEFAULT} "
                    "images)")
    return command


def changed_result_options(options: dict[str, Any], defaults: dict[str, Any]) -> dict:
    """The options of ``options`` that change results (``RESULT_FLAGS``) and differ from
    ``defaults`` (``DecomposeOptions()``'s), by name."""
    return {key: options[key] for key in RESULT_FLAGS
            if key in options and options[key] != defaults.get(key)}


def result_flags(options: dict[str, Any], defaults: dict[str, Any]) -> str:
    """``changed_result_options`` as the ``bfd decompose`` flags that give them, as typed:
    ``--control-seed 3 --prefix include``; "" when none does."""
    return " ".join(f"{RESULT_FLAGS[key]} {shlex.quote(str(value))}"
                    for key, value in changed_result_options(options, defaults).items())


def stats_only_not_decomposed(store: Store, run_id: str, flags: str) -> str:
    """Why ``bfd decompose`` of a stats-only run (``bfd audit --no-store-activations``) is
    refused, and what the user can do: the ``bfd audit --no-store-activations`` command of
    its request (``repair_command``) with the options given (``flags``, ``result_flags``),
    which computes the run again from two forwards and publishes it with them."""
    from bfd.storage import repair_command

    audit = repair_command(store, run_id, decompose_flags=flags)
    return (f"run {run_id} kept no activations (an audit with --no-store-activations): "
            f"bfd decompose has nothing of it to read. To decompose it with "
            f"{flags or 'the default options'}, audit its request again: {audit} "
            "(it computes the run again from two forward passes over its images, as a new "
            "audit, and publishes it with those options)")


def _version_time(name: str) -> datetime | None:
    match = _VERSION.search(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)


def first_published(store: Store, run_id: str) -> datetime | None:
    """When the run was first published, from what still reads (docs/layout.md, Publishing):

    1. the earliest ``created_at`` of the run's ``runs`` files that read (the published one,
       unless it holds other bytes than its pointer records, and any other version's left on
       disk; read whether or not the pointer reads);
    2. else the copy of it in the run's pointer (``published.json``, since publishes keep it
       there too);
    3. else the earliest time the run is known to have been published by then: the times in
       the version names of its table files and results groups, its pointer's ``published_at``,
       and the ``finished_at`` of its complete audits (the audit that first computed it
       finished after publishing it);
    4. else None (never published, or nothing of it reads).

    The versioned files of a run without a pointer are of publishes killed before their
    switch (``_ever_published``): neither their ``created_at`` nor their version times count
    (the run was not published then); the old layout's files do.
    """
    versions = _ever_published(store, run_id)
    times = [r["created_at"] for r in _runs_rows(store, run_id, versions)
             if r.get("created_at")]
    if times:
        return min(times)
    try:
        kept = (read_pointer(store, run_id) or {}).get("created_at")
        if kept:
            return datetime.fromisoformat(kept)
    except (ValueError, TypeError):
        pass
    bounds = []
    for table in RUN_TABLES:
        bounds += [_version_time(p.stem) for p in _run_files(store, table, run_id, versions)]
    if versions:
        bounds += [_version_time(g) for g in results_groups(store, run_id)]
    try:
        pointer = read_pointer(store, run_id) or {}
        if pointer.get("published_at"):
            bounds.append(datetime.fromisoformat(pointer["published_at"]))
    except (ValueError, TypeError):
        pass
    try:
        from .audits import read_audits

        bounds += [a["finished_at"] for a in read_audits(store)
                   if a["run_id"] == run_id and a["status"] == "complete"]
    except (OSError, ValueError):
        pass
    bounds = [t for t in bounds if t is not None]
    return min(bounds) if bounds else None
