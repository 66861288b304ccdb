"""The runs a store holds that are not published, from their plain files alone (request and
shard markers; docs/layout.md, "Run files"): what ``bfd runs`` lists beside the published runs,
with the command that takes each one further. Neither Zarr nor the activations are opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from .manifest import read_markers
from .paths import COMPUTE_LOCK, Store, read_json, run_busy, validate_run_id
from .recorded import recorded_sha256, sha256_change
from .runs import (
    NOT_STORED,
    RunRequest,
    is_stats_only,
    model_label,
    read_request,
    request_columns,
)

# Every shard extracted, nothing published: `bfd decompose` is next (or its decomposition
# failed or was interrupted).
EXTRACTED: Final[str] = "extracted"
# Shards missing (an extraction interrupted or still running), or a stats-only audit that did
# not publish.
INCOMPLETE: Final[str] = "incomplete"
# The request cannot be read, or a published table file (or the pointer): `bfd verify` says
# what is wrong and what repairs it.
DAMAGED: Final[str] = "damaged"
# Its run folder cannot be read by this user (another user's, made private by their umask):
# neither damaged nor known to be published; its owner can make it readable.
UNREADABLE: Final[str] = "unreadable"
# what makes such a run readable to the others, as every line about one says it
OWNER_CAN_READ: Final[str] = ("its owner can make it readable (chmod -R g+rX, or o+rX, on the "
                              "run's folders)")


@dataclass(frozen=True)
class UnpublishedRun:
    """A run with a request in the store and no published tables.

    Attributes:
        run_id: The run.
        status: ``EXTRACTED``, ``INCOMPLETE``, ``DAMAGED`` or ``UNREADABLE``.
        next: What to do with it: one line, the command included.
        model, weights, weights_sha256, images, images_sha256, img_size, n_images, layers,
            sites: Of its
            request (a ``DAMAGED`` published run: of its published ``runs`` row when that
            file reads; None when neither reads); ``layers`` and ``sites`` comma-joined and
            ``img_size`` one int (the height of an ``(h, w)`` request) as in the ``runs``
            table.
        n_skipped: Images skipped by its extraction; None until every shard is extracted
            (a ``DAMAGED`` run: its ``runs`` row's, when that reads).
        created_at: When it was published: a ``DAMAGED`` run's ``runs`` row's, when that
            reads; else None.
        activations: ``stored``, or ``not stored`` for a stats-only run (``bfd audit
            --no-store-activations``): ``activations_said``; None when nothing says.
    """

    run_id: str
    status: str
    next: str
    model: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    images: str | None = None
    images_sha256: str | None = None
    img_size: int | None = None
    n_images: int | None = None
    n_skipped: int | None = None
    layers: str | None = None
    sites: str | None = None
    created_at: datetime | None = None
    activations: str | None = None


def _extracted(store: Store, run_id: str, n_images: int) -> tuple[int, int]:
    """Images in the run's completed shards, and how many of them were skipped (an unreadable
    marker counts as a shard not done, as extraction takes it)."""
    spans: dict[tuple[int, int], int] = {}
    for marker in read_markers(store, run_id, tolerant=True).values():
        skipped = sum(image.get("status") == "skipped" for image in marker["images"])
        spans[(max(marker["start"], 0), min(marker["stop"], n_images))] = skipped
    done, end = 0, 0
    for start, stop in sorted(spans):  # shards do not overlap; counted once if they did
        done += max(0, stop - max(start, end))
        end = max(end, stop)
    return done, sum(spans.values())


# The columns of a damaged run taken from its published ``runs`` row when that file reads.
_RUN_FIELDS: Final[tuple[str, ...]] = ("model", "weights", "weights_sha256", "images",
                                       "images_sha256", "img_size", "n_images", "n_skipped",
                                       "layers", "sites", "created_at")


STORED: Final[str] = "stored"


def activations_said(extra: object) -> str:
    """What ``bfd runs`` says of a run's activations from its request's ``extra``:
    ``not stored`` for a stats-only run, else ``stored`` (the rule of its SQL for a published
    run's ``config_json``, ``request.extra.activations``)."""
    return NOT_STORED["activations"] if isinstance(extra, dict) and is_stats_only(extra) \
        else STORED


def activations_sql(config_json: str) -> str:
    """``activations_said`` in SQL, of a published ``runs`` row's ``config_json`` column (its
    ``request.extra.activations``; NULL for a config_json that is no JSON): ``bfd runs`` and
    the dashboard's run list."""
    return (f"CASE WHEN json_valid({config_json}) THEN CASE WHEN json_extract_string("
            f"{config_json}, '$.request.extra.activations') = '{NOT_STORED['activations']}' "
            f"THEN '{NOT_STORED['activations']}' ELSE '{STORED}' END END")


def _row_activations(row: dict) -> str | None:
    """``activations_said`` of a published ``runs`` row's ``config_json`` (None when it is no
    JSON)."""
    try:
        config = json.loads(row.get("config_json") or "")
    except (TypeError, ValueError):
        return None
    request = config.get("request") if isinstance(config, dict) else None
    return activations_said(request.get("extra") if isinstance(request, dict) else None)


def _request_fields(request: RunRequest) -> dict:
    """The ``runs`` columns of an unpublished run, from its request (``request_columns``, as
    a published run's row holds them)."""
    fields = {name: value for name, value in request_columns(request).items()
              if name in _RUN_FIELDS}
    # the model with its --model-arg options, as bfd runs shows a published run's
    return {**fields, "model": model_label(request.model, request.extra.get("model_args")),
            "activations": activations_said(dict(request.extra))}


def _damaged(store: Store, run_id: str, damage: str, row: dict | None) -> UnpublishedRun:
    """A published run left out of the SQL catalog: ``damage`` says which file. Its columns
    are its published ``runs`` row's (``row``) when that file reads (the damage is in another
    table), else its request's (no ``n_skipped``)."""
    if row is not None:
        fields = {name: row.get(name) for name in _RUN_FIELDS}
        fields["activations"] = _row_activations(row)
    else:
        try:
            fields = _request_fields(read_request(store, run_id))
        except (OSError, ValueError, KeyError, TypeError):
            fields = {}
    return UnpublishedRun(run_id, DAMAGED, f"published, but {damage}: left out of SQL queries; "
                          f"bfd verify {run_id} --store {store.root} names the "
                          "command that publishes it again", **fields)


def _state(store: Store, run_id: str) -> UnpublishedRun:
    where = f"--store {store.root}"
    try:
        request = read_request(store, run_id)
    except (OSError, ValueError, KeyError, TypeError):
        return UnpublishedRun(run_id, DAMAGED, f"its request.json cannot be read; bfd verify "
                              f"{run_id} {where} says what is damaged")
    fields = _request_fields(request)
    busy = run_busy(store, run_id)  # its lock held: its files are being written now
    if is_stats_only(request.extra):
        if busy:
            return UnpublishedRun(run_id, INCOMPLETE, busy_said(store, run_id), **fields)
        return UnpublishedRun(run_id, INCOMPLETE, "a stats-only audit that did not publish "
                              "(still running, or it failed); it keeps no activations: run "
                              "bfd audit --no-store-activations with its options again",
                              **fields)
    done, skipped = _extracted(store, run_id, request.n_images)
    if busy:
        return (UnpublishedRun(run_id, INCOMPLETE, busy_said(store, run_id), **fields)
                if done < request.n_images else
                UnpublishedRun(run_id, EXTRACTED, busy_said(store, run_id), n_skipped=skipped,
                               **fields))
    if done < request.n_images:
        return UnpublishedRun(run_id, INCOMPLETE, f"extraction incomplete ({done} of "
                              f"{request.n_images} images; interrupted, or still running): its "
                              f"bfd extract command finishes it (bfd verify {run_id} {where} "
                              "prints it)", **fields)
    return UnpublishedRun(run_id, EXTRACTED, f"extracted, not decomposed: bfd decompose "
                          f"{run_id} {where}", n_skipped=skipped, **fields)


def busy_said(store: Store, run_id: str) -> str:
    """What to do with a run another process is computing (``run_busy``): wait."""
    return (f"being computed by another process now (it holds "
            f"{store.run_dir(run_id) / COMPUTE_LOCK}): wait for it to finish, nothing to run")


def _damaged_publication(store: Store, run_id: str) -> tuple[str | None, dict | None]:
    """The first published file of the run (its pointer, or a table file the pointer names)
    that does not read, or whose bytes are not those its pointer recorded (a file changed
    after it was published, which the SQL catalog leaves out too), with why (None when all
    read as published: published since ``published`` was read); and the run's published
    ``runs`` row when that file reads as published (None else). Each table file is read
    whole, as ``bfd verify`` reads it."""
    import pyarrow.parquet as pq  # here: what `bfd runs` reads the catalog with anyway

    path = store.published_pointer(run_id)
    try:
        pointer = read_json(path)
        files = {table: store.root / rel for table, rel in pointer["tables"].items()}
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{path} (the publication pointer) does not read", None
    damage, row = None, None
    for table, file in files.items():
        try:
            data = pq.read_table(file)
            changed = sha256_change(file, recorded_sha256(pointer, table))
        except FileNotFoundError:
            damage = damage or f"{file} is missing"
            continue
        except Exception:  # noqa: BLE001 - any read failure is the damage
            damage = damage or f"{file} does not read"
            continue
        if changed is not None:
            damage = damage or f"{file} changed after it was published"
        elif table == "runs" and data.num_rows == 1:
            row = data.to_pylist()[0]
    return damage, row


def unpublished_runs(store: Store, published: Collection[str]) -> list[UnpublishedRun]:
    """Every run of the store with a request (``runs/<run_id>/request.json``) that is not in
    ``published`` and has no publication pointer, by run id; and every run with a pointer
    not in ``published`` whose published files do not read (the SQL catalog leaves it out),
    as ``DAMAGED``.

    Args:
        store: The store.
        published: The run ids whose tables are published (e.g. the SQL ``runs`` table's); a
            run published before pointers existed has none, so it is told by this.

    Returns:
        One record per such run: its status and the command that takes it further.
    """
    try:
        names = sorted(os.listdir(store.runs_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        try:
            validate_run_id(name)
        except ValueError:  # not a run's folder
            continue
        if name in published:
            continue
        try:
            has_pointer = store.published_pointer(name).exists()
        except PermissionError as err:
            out.append(UnpublishedRun(
                name, UNREADABLE, f"its folder {store.run_dir(name)} cannot be read by this "
                f"user ({err.strerror}): left out of SQL queries; {OWNER_CAN_READ}"))
            continue
        if has_pointer:
            damage, row = _damaged_publication(store, name)
            if damage is not None:
                out.append(_damaged(store, name, damage, row))
            continue
        if not (store.run_dir(name) / "request.json").exists():
            continue
        out.append(_state(store, name))
    return out


def unpublished_run(store: Store, run_id: str) -> UnpublishedRun | None:
    """The run ``run_id`` when the store holds its request and it is not published (no
    publication pointer): its status and the command that takes it further, for a reading
    command that found no published run of that id; None when there is no such run.

    Args:
        store: The store.
        run_id: The run id as given (an invalid one names no run).
    """
    try:
        validate_run_id(run_id)
    except ValueError:
        return None
    if (store.published_pointer(run_id).exists()
            or not (store.run_dir(run_id) / "request.json").exists()):
        return None
    return _state(store, run_id)
