"""Image sources: list the images of a run up front, then decode them without ever stopping.

The image list is fixed at listing time: the store gets one slot per listed image, in list
order. An image that later fails to decode keeps its slot (left NaN in the store) and is
reported with status ``"skipped"`` and its reason in the manifest; ``iter_batches`` yields
the indices of the images that did decode.

Sources: a folder (recursive), a manifest text file, or ``"samples"``: deterministic crops of
the natural images bundled inside scikit-image (no network needed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
from PIL import Image, ImageOps

from bfd.files import local_cores, sha256_file
from bfd.image_folders import list_folder
from bfd.text import names_read_as_utf8, shown

if TYPE_CHECKING:  # listing images needs no torch (a request is keyed without it)
    import torch

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
SAMPLES = "samples"
SAMPLES_DEFAULT_N = 64
# Listing hashes every sample's pixels (~1 ms each): this many take about a minute. The
# samples are a demo set; a larger run wants real images.
SAMPLES_MAX = 50_000
# Natural images that ship inside the scikit-image wheel (skimage.data reads them without
# pooch or network). PNG only: lossless decoding keeps every sample's sha256 identical across
# Pillow/libjpeg versions, so "samples" names the same pixels on every install.
SAMPLE_BASES: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "immunohistochemistry", "motorcycle", "camera", "coins",
    "moon", "brick", "grass", "gravel",
)
_SAMPLE_ID = re.compile(r"^samples/([a-z_]+)-(\d{3,})$")
_ACCEPTED = "a folder of images, a manifest text file (one path per line) or 'samples'"


class ImageDecodeError(ValueError):
    """An image file that cannot be turned into an RGB picture; the message is the reason."""


@dataclass(frozen=True)
class ImageRecord:
    """One listed image.

    Attributes:
        index: Slot in the store (position in the listing).
        id: Relative posix path (folders), the line as written (manifests), or
            ``samples/<base>-<variant>`` (samples).
        sha256: Of the file bytes; for samples, of ``"<h>x<w>x3:"`` plus the uint8 pixels;
            ``""`` for a manifest entry whose file is missing.
        path: The file as an absolute path, or None for samples.
        duplicate_of: The id of an earlier record of the same content (sha256), or None:
            such a record is skipped, never decoded (``DUPLICATE``).
    """

    index: int
    id: str
    sha256: str
    path: str | None
    duplicate_of: str | None = None


@dataclass(frozen=True)
class Batch:
    """Decoded images of one group of records; ``images[i]`` belongs to ``indices[i]``.

    ``images`` is (len(indices), 3, H, W); when nothing decoded it is an empty tensor of shape
    (0,). ``errors`` holds ``(index, reason)`` for each record that was skipped.
    """

    indices: list[int]
    images: torch.Tensor
    errors: list[tuple[int, str]]


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@cache
def _sample_base(name: str) -> np.ndarray:
    import skimage.data

    img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(
        skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img.setflags(write=False)
    return img


def _frac(x: float) -> float:
    return x - math.floor(x)


def sample_array(base: str, variant: int) -> np.ndarray:
    """Variant ``variant`` of bundled image ``base`` as (h, w, 3) uint8.

    Variant 0 is the whole image. Variant v > 0 is a square crop (55-90 % of the short side)
    placed by an additive recurrence on irrational steps (so no two variants share a crop),
    then one of the 8 flips/rotations, cycling with v. Pure integer slicing, no resampling.
    """
    if base not in SAMPLE_BASES:
        raise ValueError(f"unknown sample base {base!r}; expected one of {SAMPLE_BASES}")
    img = _sample_base(base)
    if variant == 0:
        return np.ascontiguousarray(img)
    h, w = img.shape[:2]
    # R3 low-discrepancy steps (powers of 1/phi_3, the plastic number), spread out crops.
    g = 1.2207440846057596
    u = [_frac(0.5 + variant * g ** -(i + 1)) for i in range(3)]
    side = int(min(h, w) * (0.55 + 0.35 * u[0]))
    top, left = int(u[1] * (h - side)), int(u[2] * (w - side))
    crop = img[top:top + side, left:left + side]
    o = (variant - 1) % 8
    crop = np.rot90(crop[:, ::-1] if o >= 4 else crop, k=o % 4)
    return np.ascontiguousarray(crop)


def _sample_sha(arr: np.ndarray) -> str:
    h, w = arr.shape[:2]
    return _sha256_bytes(f"{h}x{w}x3:".encode() + arr.tobytes())


def _sample_record(k: int) -> ImageRecord:
    base, variant = SAMPLE_BASES[k % len(SAMPLE_BASES)], k // len(SAMPLE_BASES)
    return ImageRecord(k, f"{SAMPLES}/{base}-{variant:03d}",
                       _sample_sha(sample_array(base, variant)), None)


# Threads that hash a source's images: the copies and sha256 release the GIL (512 samples took
# 0.49-0.61 s on one thread of the device machine's 16 cores, 0.10-0.12 s on 8:
# bench/README.md).
HASH_THREADS = 8


def _hashed(fn: Callable[[int], ImageRecord], n: int) -> list[ImageRecord]:
    """``fn(0..n-1)`` in order, on up to ``HASH_THREADS`` threads where cores allow."""
    threads = min(HASH_THREADS, local_cores(), n)
    if threads <= 1:
        return [fn(k) for k in range(n)]
    with ThreadPoolExecutor(threads, thread_name_prefix="bfd-hash") as pool:
        return list(pool.map(fn, range(n)))


def _list_samples(n: int) -> list[ImageRecord]:
    return _hashed(_sample_record, n)


def _list_manifest(manifest: Path) -> list[tuple[str, str]]:
    entries: list[tuple[str, str]] = []
    seen: dict[str, str] = {}  # each entry's normalised path: the entry as written
    try:
        text = manifest.read_text(encoding="utf-8-sig")  # a BOM (Notepad's) is no path
    except UnicodeDecodeError as e:
        raise ValueError(f"image manifest {str(manifest)!r} is not a text file ({e.reason} at "
                         f"byte {e.start}); expected one image path per line") from e
    if "\x00" in text:
        raise ValueError(f"image manifest {str(manifest)!r} holds NUL bytes (a binary file?); "
                         "expected one image path per line")
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        full = os.path.normpath(p if p.is_absolute() else manifest.parent / p)
        if full in seen:  # one file, however spelled (good0.png, ./good0.png)
            raise ValueError(f"manifest {str(manifest)!r} lists {entry!r} twice (as "
                             f"{seen[full]!r} too); expected each image once")
        seen[full] = entry
        entries.append((entry, str(p if p.is_absolute() else manifest.parent / p)))
    return entries


def list_images(source: str, n_images: int | None = None) -> list[ImageRecord]:
    """The images of a run, in their fixed order, with content hashes.

    Args:
        source: A folder (searched recursively; image suffixes, any case; hidden files and
            folders skipped; sorted by relative posix path), a manifest text file (one path per
            line, relative to the manifest's folder; blank lines and ``#`` comments skipped),
            or ``"samples"``.
        n_images: Keep the first ``n_images``; default all (folders, manifests) or 64
            (samples, where any number can be made).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: ``source`` is not one of the accepted kinds or lists no images.
    """
    entries = _source_entries(source, n_images)
    if entries is None:
        return _list_samples(n_images or SAMPLES_DEFAULT_N)
    # A missing manifest entry keeps its slot and is skipped at decode time, like any bad file.
    def record(i: int) -> ImageRecord:
        rid, p = entries[i]
        return ImageRecord(i, rid, _content_sha256(p), p)

    return _marked_duplicates(_hashed(record, len(entries)))


# The reason a record of the same content as an earlier one is skipped (trial 27): the
# intervals take the images as independent draws, and a copy counted twice narrowed every
# interval as if it were a second image (16 copies of one image: every share 1 or 0, its
# interval [1, 1], every head position-position).
DUPLICATE: Final[str] = "duplicate of {first} (the same bytes, sha256 {sha}): counted once"


def _marked_duplicates(records: list[ImageRecord]) -> list[ImageRecord]:
    """``records`` with each one whose content an earlier one has marked ``duplicate_of``
    that one (a missing file, sha256 ``""``, is no one's duplicate)."""
    first: dict[str, str] = {}
    out = []
    for r in records:
        if r.sha256 and r.sha256 in first:
            r = dataclasses.replace(r, duplicate_of=first[r.sha256])
        elif r.sha256:
            first[r.sha256] = r.id
        out.append(r)
    return out


def folder_note(source: str) -> str | None:
    """What a folder source's listing leaves out that may have been meant as images: links to
    folders (not followed) and files of image formats whose suffixes bfd does not list
    (``.avif``, ``.jfif``, ...), in one line; None for another source or a folder with none
    (trial 24: such images were left out without a word)."""
    from bfd.image_folders import left_out

    path = Path(source).expanduser().absolute()
    if source == SAMPLES or not path.is_dir():
        return None
    links, others = left_out(path, IMAGE_SUFFIXES)
    if not links and not others:
        return None

    def few(names: tuple[str, ...]) -> str:  # names found in the folder: printed, not acted on
        return ", ".join(map(shown, names[:3])) + (", ..." if len(names) > 3 else "")

    said = ([f"{len(links)} link(s) to folders, not followed ({few(links)})"] if links else []) \
        + ([f"{len(others)} file(s) of image formats it does not list ({few(others)}; it lists "
            f"{', '.join(sorted(IMAGE_SUFFIXES))})"] if others else [])
    return (f"{shown(source)} holds {' and '.join(said)}: left out; a manifest of their paths "
            "lists them")


def check_source(source: str, n_images: int | None = None) -> int | None:
    """Raises what ``list_images`` raises for a bad ``source``, and refuses a source of copies
    of one file, hashing no image unless all its files are of one size: a command checks its
    request before it records or computes anything.

    Returns:
        The number of images ``list_images`` will list (at most ``n_images``), or None for
        the samples (made in any number asked for).
    """
    entries = _source_entries(source, n_images)
    if entries is None:
        return None
    _require_two_different(source, entries)
    return len(entries)


def _content_sha256(path: str) -> str:
    """sha256 of a listed file's bytes; ``""`` where it cannot be read (missing, a folder, no
    permission: skipped at decode time with its reason, as an undecodable file is; trial 30:
    one unreadable file refused the whole audit)."""
    try:
        return sha256_file(path)
    except OSError:
        return ""


def _require_two_different(source: str, entries: list[tuple[str, str]]) -> None:
    """Refuses a source whose files are all copies of one (trial 27: every share 1 with the
    interval [1, 1]). Files of two sizes differ: only files all of one size are hashed, and
    only until one differs from the first."""
    sizes = set()
    for _, p in entries:
        with contextlib.suppress(OSError):  # a missing file: skipped at decode time
            sizes.add(os.stat(p).st_size)
        if len(sizes) > 1:
            return
    # hashed until one differs: the second file, unless it is a copy of the first (files
    # that cannot be read are skipped at decode time: none is a copy)
    first, copies = None, []
    for p in (p for _, p in entries if Path(p).is_file()):
        digest = _content_sha256(p)
        if not digest:
            continue
        if first is not None and digest != first:
            return
        first = digest
        copies.append(p)
    if len(copies) >= 2:
        raise ValueError(f"the {len(copies)} images of {source!r} are copies of one file "
                         f"({os.path.basename(copies[0])}: the same bytes); BFD needs at least "
                         "2 different images")


def _source_entries(source: str, n_images: int | None) -> list[tuple[str, str]] | None:
    """The first ``n_images`` (id, absolute path) of a folder or manifest; None for the
    samples."""
    if n_images is not None and n_images < 1:
        raise ValueError(f"n_images must be a positive integer or None; got {n_images}")
    if source == SAMPLES:
        if (n_images or 0) > SAMPLES_MAX:
            raise ValueError(f"--images samples makes at most {SAMPLES_MAX} images; got "
                             f"--n-images {n_images} (use a folder or manifest of images)")
        return None
    if not source.strip():  # Path("") is the current folder: a shell variable left unset
        raise ValueError(f"image source {source!r} is empty (an unset shell variable?); "
                         f"expected {_ACCEPTED}")
    # Absolute paths, so records stay valid in workers that run from another directory.
    path = Path(source).expanduser().absolute()
    if path.is_dir():
        entries = list_folder(path, IMAGE_SUFFIXES)  # walked once while unchanged
    elif path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise ValueError(f"image source {source!r} is a single image; expected {_ACCEPTED}")
        entries = _list_manifest(path)
    else:
        raise FileNotFoundError(f"image source {source!r} does not exist; expected {_ACCEPTED}")
    if not entries:
        raise ValueError(f"image source {source!r} lists no images "
                         f"(suffixes {sorted(IMAGE_SUFFIXES)}); expected {_ACCEPTED}")
    entries = entries[:n_images]
    if not path.is_dir():
        _require_two_files(source, path, entries)
    for entry, _ in entries:  # ids are kept as UTF-8 text (the run's JSON files, the tables)
        try:
            entry.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"image {entry!r} of {source!r} has a name that is not UTF-8 "
                             "text; rename it (or list the images in a manifest)") from None
        if not entry.isascii() and not names_read_as_utf8():
            raise ValueError(
                f"image {entry!r} of {source!r} has a name this process reads in "
                f"{sys.getfilesystemencoding()}, not UTF-8, so its id (and the run's) would "
                "differ from a UTF-8 locale's: start Python with PYTHONUTF8=1 (or -X utf8; "
                "the bfd command does it itself)")
    return entries


def _require_two_files(source: str, manifest: Path, entries: list[tuple[str, str]]) -> None:
    """Refuses a manifest of which fewer than 2 entries name a file (a CSV with a header and
    a label column, paths relative to another folder than the manifest's): BFD needs 2
    images, and extraction would find none after loading the model (trial 24). Stops at
    the second file found."""
    found, first_missing = 0, None
    for entry, p in entries:
        if Path(p).is_file():
            found += 1
            if found == 2:
                return
        elif first_missing is None:
            first_missing = (entry, p)
    said = f"; the first, {first_missing[0]!r}, is {first_missing[1]}" if first_missing else ""
    raise ValueError(f"image manifest {source!r}: {found} of its {len(entries)} entries "
                     f"name a file{said}. Each line is one path, relative to the manifest's "
                     f"folder {str(manifest.parent)!r}; BFD needs at least 2 images")


def manifest_sha256(records: Sequence[ImageRecord]) -> str:
    """sha256 of the compact JSON list ``[[id, sha256], ...]`` in record order."""
    payload = json.dumps([[r.id, r.sha256] for r in records], separators=(",", ":"))
    return _sha256_bytes(payload.encode())


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Single-channel 16/32-bit integer or float images to 8-bit RGB.

    PIL's own ``convert("RGB")`` clips these at 255 instead of rescaling. 16-bit modes and
    integer data within [0, 65535] are divided by 257; floats within [0, 1] are scaled by 255;
    anything else is min-max stretched.
    """
    a = np.asarray(img, dtype=np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0 and hi <= 65535):
        a = a / 257.0
    elif img.mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    else:
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([g] * 3, axis=-1))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any decodable PIL image as 8-bit RGB.

    EXIF orientation is applied (the picture as a viewer shows it); the first frame of an
    animation or multi-page file is used; transparency (RGBA, LA, PA, palette with a
    transparent colour) is composited on white; CMYK, YCbCr, LAB, HSV, 1, L and P go through
    PIL's conversion; 16/32-bit single-channel images are rescaled (``_high_bit_depth_to_rgb``).
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _high_bit_depth_to_rgb(img)
    if (img.mode == "P" and "transparency" in img.info) or img.mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


def _decode(data: bytes) -> Image.Image:
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb(img)
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(f"not a recognised image format ({len(data)} bytes)") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"refused as a decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise ImageDecodeError(f"cannot decode: {type(e).__name__}: {e}") from None


def load_image(record: ImageRecord) -> Image.Image:
    """The record's picture as an RGB PIL image (see ``to_rgb`` for mode conversions).

    Raises:
        ImageDecodeError: Missing, changed since listing, empty, truncated or not an image.
    """
    if record.duplicate_of is not None:
        raise ImageDecodeError(DUPLICATE.format(first=record.duplicate_of, sha=record.sha256[:12]))
    if record.path is None:
        m = _SAMPLE_ID.match(record.id)
        if m is None:
            raise ImageDecodeError(f"record {record.id!r} has no path and is not a sample id "
                                   "(samples/<base>-<variant>)")
        try:
            return Image.fromarray(sample_array(m.group(1), int(m.group(2))))
        except ValueError as e:
            raise ImageDecodeError(str(e)) from None
    try:
        data = Path(record.path).read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"cannot read {record.path!r}: {e.strerror or e}") from None
    if record.sha256 and _sha256_bytes(data) != record.sha256:
        raise ImageDecodeError(f"file changed since listing (sha256 {_sha256_bytes(data)[:12]}, "
                               f"listed {record.sha256[:12]})")
    return _decode(data)


def _load_one(
    record: ImageRecord, transform: Callable[[Image.Image], torch.Tensor]
) -> torch.Tensor | str:
    try:
        return transform(load_image(record))
    except ImageDecodeError as e:
        return str(e)


def _groups(n: int, batch_size: int, align: int | None) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive groups of at most ``batch_size`` that never cross a
    multiple of ``align``."""
    span = align or n or 1
    for chunk in range(0, n, span):
        end = min(chunk + span, n)
        for start in range(chunk, end, batch_size):
            yield start, min(start + batch_size, end)


def iter_batches(
    records: Sequence[ImageRecord],
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    num_workers: int = 0,
    align: int | None = None,
    prefetch: int = 2,
) -> Iterator[Batch]:
    """Decode and transform ``records`` in consecutive groups of ``batch_size``; never raises
    for a bad image.

    Groups follow the record order, so a caller that passes the records of one store chunk
    (or several, with ``align`` the chunk size) gets batches aligned to its chunks. Each
    yielded ``Batch`` holds the images of the group that decoded and the reasons of those that
    did not.

    Args:
        records: From ``list_images`` (any subset, any order).
        transform: PIL RGB image -> (3, H, W) tensor, e.g. ``bfd.models.transform(model)``.
        batch_size: Records per group.
        num_workers: Decoding threads (PIL releases the GIL while decoding); 0 decodes inline.
        align: When given, no group crosses a multiple of ``align`` records (counted from the
            first): a group ends early there.
        prefetch: With threads, groups decoded ahead of the one being consumed, so that
            decoding overlaps whatever the caller does with a batch (a forward, a write).
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size}")
    if align is not None and align < 1:
        raise ValueError(f"align must be a positive integer; got {align}")
    groups = [records[a:b] for a, b in _groups(len(records), batch_size, align)]
    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
    try:
        pending: deque[list] = deque()
        for k, group in enumerate(groups):
            if pool is None:
                loaded = [_load_one(r, transform) for r in group]
            else:
                while len(pending) <= min(prefetch, len(groups) - 1 - k):
                    ahead = groups[k + len(pending)]
                    pending.append([pool.submit(_load_one, r, transform) for r in ahead])
                loaded = [f.result() for f in pending.popleft()]
            good = [(r.index, t) for r, t in zip(group, loaded, strict=True)
                    if isinstance(t, torch.Tensor)]
            errors = [(r.index, t) for r, t in zip(group, loaded, strict=True)
                      if isinstance(t, str)]
            images = torch.stack([t for _, t in good]) if good else torch.empty(0)
            yield Batch([i for i, _ in good], images, errors)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
