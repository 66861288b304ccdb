"""Image manifest and shard plan of a run, safe under concurrent shard writers.

``runs/<run_id>/images.json`` is written once, when the run is planned, and never rewritten.
A worker that finishes shard k writes ``runs/<run_id>/shards/<k>.json`` (atomically, after its
chunks are in Zarr) holding the final status of the shard's images. Readers merge the two, so
no two writers ever touch the same file.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from .paths import DamagedStoreError, Store, read_json, write_json_atomic
from .runs import sha256_hex

ImageStatus = Literal["ok", "skipped", "pending"]
IMAGE_STATUSES: Final[tuple[str, ...]] = ("ok", "skipped", "pending")
_SHARD_FILE_RE: Final = re.compile(r"^(\d+)\.json$")


@dataclass(frozen=True)
class ImageRecord:
    """One row of the image manifest.

    Attributes:
        index: Position of the image along the ``image`` dimension (0-based).
        id: Stable image id (e.g. path relative to the image source); the ``image`` coordinate.
        sha256: sha256 of the image file bytes, or None while unknown.
        status: ``"pending"`` until its shard is done, then ``"ok"`` or ``"skipped"``.
        error: Why an image was skipped, else None.
    """

    index: int
    id: str
    sha256: str | None = None
    status: ImageStatus = "pending"
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in IMAGE_STATUSES:
            raise ValueError(
                f"image {self.index}: status must be one of {IMAGE_STATUSES}, got {self.status!r}"
            )
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"image {self.index}: id must be a non-empty str, got {self.id!r}")

    def to_json_dict(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return dataclasses.asdict(self)


def image_list_sha256(records: Iterable[ImageRecord]) -> str:
    """Hash of an image list for ``RunRequest.images_sha256``: order, ids and file hashes.

    Status and error are left out: they are outcomes of the run, not part of its request.
    """
    return sha256_hex([[r.index, r.id, r.sha256] for r in records])


def _check_records(records: Sequence[ImageRecord], start: int, stop: int, what: str) -> None:
    indices = [r.index for r in records]
    if indices != list(range(start, stop)):
        raise ValueError(
            f"{what}: expected image indices {start}..{stop - 1} in order, "
            f"got {len(indices)} records starting {indices[:5]}"
        )


def write_image_manifest(store: Store, run_id: str, records: Sequence[ImageRecord]) -> None:
    """Write the run's base image manifest ``images.json`` (idempotent).

    Args:
        store: The store.
        run_id: The run id.
        records: One record per image, indices 0..n-1 in order, unique ids. Usually all
            ``"pending"``; images known bad at listing time may already be ``"skipped"``.

    Raises:
        ValueError: If indices or ids are malformed, or a different manifest is stored.
    """
    _check_records(records, 0, len(records), "image manifest")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"image manifest: image ids must be unique, {dup!r} repeats")
    path = store.run_dir(run_id) / "images.json"
    payload = [r.to_json_dict() for r in records]
    if path.exists():
        try:
            stored = read_json(path)
        except DamagedStoreError:
            stored = None  # damaged: written again below, as the run's id implies it
        if stored is not None:
            if stored != payload:
                raise ValueError(
                    f"{path} already holds a different image manifest for run "
                    f"{run_id}; the run id should have changed with the image list"
                )
            return
    write_json_atomic(path, payload)


def read_image_manifest(store: Store, run_id: str) -> list[ImageRecord]:
    """The image manifest with every completed shard's statuses merged in.

    Args:
        store: The store.
        run_id: The run id.

    Returns:
        One record per image, by index.

    Raises:
        FileNotFoundError: If the run has no images.json.
        ValueError: If a shard marker names an image id that differs from the manifest.
    """
    path = store.run_dir(run_id) / "images.json"
    if not path.exists():
        raise FileNotFoundError(f"no image manifest at {path}")
    records = [ImageRecord(**r) for r in read_json(path)]
    for marker in read_markers(store, run_id).values():
        for item in marker["images"]:
            rec = ImageRecord(**item)
            base = records[rec.index]
            if base.id != rec.id:
                raise ValueError(
                    f"shard {marker['shard']} of run {run_id}: image {rec.index} "
                    f"is {rec.id!r} but the manifest says {base.id!r}"
                )
            records[rec.index] = rec
    return records


@dataclass(frozen=True)
class Shard:
    """A unit of extraction work: images ``start:stop``, always whole Zarr chunks.

    Attributes:
        index: Shard number k (its marker is ``shards/<k>.json``).
        start: First image index (a multiple of images_per_chunk).
        stop: One past the last image index (a multiple of images_per_chunk, or n_images).
    """

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Number of images in the shard."""
        return self.stop - self.start


def plan_shards(n_images: int, images_per_chunk: int, images_per_shard: int) -> list[Shard]:
    """Split ``n_images`` into shards that own whole chunks.

    Zarr writers that share a chunk silently lose data, so a shard must start and end on a
    chunk boundary; only the last shard may end at ``n_images`` inside a chunk.

    Args:
        n_images: Number of images (>= 1).
        images_per_chunk: Images per Zarr chunk along ``image``.
        images_per_shard: Images per shard; a multiple of ``images_per_chunk``.

    Returns:
        Shards 0..K-1 covering ``range(n_images)`` in order.

    Raises:
        ValueError: If a size is not positive or images_per_shard is not a multiple of
            images_per_chunk.
    """
    for name, value in (
        ("n_images", n_images),
        ("images_per_chunk", images_per_chunk),
        ("images_per_shard", images_per_shard),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if images_per_shard % images_per_chunk:
        raise ValueError(
            f"images_per_shard={images_per_shard} must be a multiple of "
            f"images_per_chunk={images_per_chunk}, so that each shard owns whole chunks"
        )
    return [
        Shard(k, start, min(start + images_per_shard, n_images))
        for k, start in enumerate(range(0, n_images, images_per_shard))
    ]


def mark_shard_done(
    store: Store, run_id: str, shard: Shard, image_statuses: Sequence[ImageRecord]
) -> None:
    """Record that shard k is complete: call only after all its chunks are written.

    The marker is written to a temporary name and renamed, so it appears only whole.
    Writing it again (a retried shard) replaces it.

    Args:
        store: The store.
        run_id: The run id.
        shard: The finished shard.
        image_statuses: Final records of exactly the shard's images, in index order, each
            ``"ok"`` or ``"skipped"``.

    Raises:
        ValueError: If the records do not match the shard or one is still ``"pending"``.
    """
    _check_records(image_statuses, shard.start, shard.stop, f"shard {shard.index}")
    pending = [r.index for r in image_statuses if r.status == "pending"]
    if pending:
        raise ValueError(
            f"shard {shard.index}: a done shard has no pending images, got pending {pending[:5]}"
        )
    marker = {
        "shard": shard.index,
        "start": shard.start,
        "stop": shard.stop,
        "completed_at": datetime.now(UTC).isoformat(),
        "images": [r.to_json_dict() for r in image_statuses],
    }
    write_json_atomic(store.shards_dir(run_id) / f"{shard.index}.json", marker)


def marker_files(store: Store, run_id: str) -> dict[int, Path]:
    """The run's shard marker files (``shards/<k>.json``), by shard index; none read."""
    directory = store.shards_dir(run_id)
    if not directory.is_dir():
        return {}
    return {int(m.group(1)): p for p in directory.iterdir() if (m := _SHARD_FILE_RE.match(p.name))}


def read_marker(path: Path) -> dict[str, Any]:
    """One shard marker, checked to be one: an object with int ``start`` and ``stop`` and a
    list of image objects.

    Raises:
        DamagedStoreError: If the file is not JSON or not a shard marker; names the file.
        OSError: If it cannot be read.
    """
    marker = read_json(path)
    if (not isinstance(marker, dict) or not {"start", "stop", "images"} <= set(marker)
            or not all(type(marker[key]) is int for key in ("start", "stop"))
            or not isinstance(marker["images"], list)
            or not all(isinstance(image, dict) for image in marker["images"])):
        raise DamagedStoreError(f"{path} is damaged: not a shard marker")
    return marker


def read_markers(store: Store, run_id: str, *,
                 tolerant: bool = False) -> dict[int, dict[str, Any]]:
    """Every shard marker of the run, by shard index.

    Args:
        store: The store.
        run_id: The run id.
        tolerant: Leave out a marker that cannot be read or is not one (its shard counts as
            not done, as extraction takes it) instead of raising.

    Raises:
        DamagedStoreError: Unless ``tolerant``, if a marker is not JSON or not a marker.
        OSError: Unless ``tolerant``, if a marker cannot be read.
    """
    out: dict[int, dict[str, Any]] = {}
    for k, path in marker_files(store, run_id).items():
        try:
            out[k] = read_marker(path)
        except (OSError, DamagedStoreError):
            if not tolerant:
                raise
    return out


def shard_ranges(store: Store, run_id: str) -> dict[int, tuple[int, int]]:
    """``(start, stop)`` image range of every completed shard, by shard index."""
    return {k: (m["start"], m["stop"]) for k, m in read_markers(store, run_id).items()}


def completed_shards(store: Store, run_id: str, plan: Sequence[Shard] | None = None) -> set[int]:
    """Indices of the shards whose marker exists.

    Args:
        store: The store.
        run_id: The run id.
        plan: If given, every marker must match its shard's range in this plan (a resume
            with another ``images_per_shard`` would otherwise skip the wrong images).

    Returns:
        The set of completed shard indices.

    Raises:
        ValueError: If ``plan`` is given and a marker disagrees with it.
    """
    if plan is None:
        return set(marker_files(store, run_id))
    by_index = {s.index: s for s in plan}
    markers = read_markers(store, run_id)
    for k, marker in markers.items():
        check_marker_in_plan(run_id, k, marker, by_index)
    return set(markers)


def check_marker_in_plan(run_id: str, k: int, marker: dict[str, Any],
                         by_index: dict[int, Shard]) -> None:
    """Refuse a shard marker whose image range is not shard ``k`` of the plan (a resume with
    another ``images_per_shard``).

    Raises:
        ValueError: Naming the marker's range and the plan's.
    """
    s = by_index.get(k)
    if s is None or (marker["start"], marker["stop"]) != (s.start, s.stop):
        planned = None if s is None else (s.start, s.stop)
        raise ValueError(
            f"run {run_id}: marker of shard {k} covers images "
            f"{marker['start']}:{marker['stop']}, the plan has {planned}"
        )
