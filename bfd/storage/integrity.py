"""Is a run's store intact? A cheap check before a shard marker is trusted, and the full check
of ``bfd verify``.

A shard marker says "my chunks are written", but a chunk file can be lost or truncated later
(a disk fault, a hand-made copy). The cheap check (``trusted_shards``) stats each marked
shard's chunk files: present, and of the exact size when stored uncompressed; extraction
recomputes any shard that fails it, and decomposition refuses the run until then. The full
check (``verify_run``) also reads every chunk, the model tensors and the run's table files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow.parquet as pq
import zarr

from .activations import TEMPLATE_ATTR, _open_group
from .chunk_check import READ_THREADS, ChunkJob, ChunkVerifier
from .manifest import Shard, check_marker_in_plan, marker_files, read_marker
from .paths import DamagedStoreError, Store, check_store, legacy_table_files, read_json
from .tables import TABLE_SCHEMAS, added_later


@dataclass(frozen=True)
class Fault:
    """One thing wrong in a store: the file at fault and what is wrong with it.

    Attributes:
        path: The file (or folder) at fault.
        problem: What is wrong, in a few words.
        shard: The extraction shard it belongs to, when it belongs to one (extraction
            recomputes that shard).
        published: Whether it is a file that publishing writes (a table file, the pointer):
            decomposition, not extraction, writes it again.
        array: The activation array (folder) of a chunk file at fault.
        layer: The block of a chunk file at fault.
        kind: What is wrong with a chunk file, as counted when there are many
            (``bfd.storage.fault_lines``): ``chunk files missing``, ...
        older: A table file published by an older bfd, lacking only columns added since
            (``bfd.storage.tables.added_later``): no damage (``bfd verify`` says so in its
            run's line, not as a fault), but not what this version publishes, so an audit
            publishes it again, as a damaged one.
    """

    path: str
    problem: str
    shard: int | None = None
    published: bool = False
    array: str | None = None
    layer: int | None = None
    kind: str | None = None
    older: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


# An activation array whose folder is gone (``rm -rf bfd.zarr/RUN/attn_in`` to free space):
# extraction makes it again and extracts every shard into it.
ARRAY_MISSING: Final[str] = "activation array missing (its folder is gone)"


def missing_arrays(group: zarr.Group) -> list[str]:
    """The sites of the run's template whose activation array is not in its group."""
    return [site for site in group.attrs[TEMPLATE_ATTR]["sites"] if site not in group]


def _array_faults(store: Store, run_id: str, sites: Sequence[str],
                  shard: int | None = None) -> list[Fault]:
    """An ``ARRAY_MISSING`` fault of each of the run's ``sites`` (``missing_arrays``)."""
    return [Fault(f"{store.zarr_path}/{store.run_group(run_id)}/{site}", ARRAY_MISSING, shard)
            for site in sites]


def _chunk_files(group: zarr.Group, zarr_root: Path, start: int, stop: int,
                 sites: Sequence[str]) -> Iterator[tuple[int, Path, int | None, Fault]]:
    """(layer position, chunk file, expected bytes or None, its fault's fields) of images
    start:stop of ``sites``."""
    layers = group.attrs[TEMPLATE_ATTR]["layers"]
    for site in sites:
        array = group[site]
        ipc = array.chunks[1]
        size = None
        if not array.compressors and not array.filters:
            size = math.prod(array.chunks) * array.dtype.itemsize
        for layer in range(array.shape[0]):
            for c in range(start // ipc, math.ceil(stop / ipc)):
                key = array.metadata.encode_chunk_key((layer, c, 0, 0))
                path = zarr_root / array.path / key
                yield layer, path, size, Fault(str(path), "", array=str(zarr_root / array.path),
                                               layer=layers[layer])


def _stat_faults(path: Path, size: int | None, shard: int, at: Fault) -> list[Fault]:
    def fault(problem: str, kind: str) -> list[Fault]:
        return [replace(at, problem=problem, shard=shard, kind=kind)]

    try:
        actual = os.stat(path).st_size
    except FileNotFoundError:
        return fault("chunk file missing", "chunk files missing")
    except NotADirectoryError:
        return fault("chunk file missing (a file stands where a folder should)",
                     "chunk files missing")
    if size is not None and actual != size:
        return fault(f"chunk file has {actual} bytes, expected {size}",
                     f"chunk files of another size than {size} bytes")
    if actual == 0:
        return fault("chunk file is empty", "chunk files empty")
    return []


def trusted_shards(store: Store, run_id: str,
                   plan: Sequence[Shard] | None = None) -> tuple[set[int], list[Fault]]:
    """The shards whose marker can be trusted, and the faults of the marked ones that cannot.

    A marker is trusted when it reads as a marker, covers its planned range, and every chunk
    file of its images is present (of the exact size, when stored uncompressed). Only file
    sizes are looked at: a cost of one ``stat`` per chunk. A Zarr part kept elsewhere
    (``zarr_url``) is not checked and every readable marker is trusted.

    Args:
        store: The store.
        run_id: The run id.
        plan: If given, a marker must cover its shard's range in this plan.

    Raises:
        ValueError: If ``plan`` is given and a readable marker covers another range (a resume
            with another ``images_per_shard``).
    """
    by_index = {s.index: s for s in plan} if plan is not None else None
    group = _open_group(store, run_id, "r")
    zarr_dir = store.zarr_dir
    trusted: set[int] = set()
    faults: list[Fault] = []
    complete = group is not None and TEMPLATE_ATTR in group.attrs
    gone = missing_arrays(group) if complete else []
    present = [s for s in group.attrs[TEMPLATE_ATTR]["sites"] if s not in gone] if complete \
        else []
    for k, path in sorted(marker_files(store, run_id).items()):
        try:
            marker = read_marker(path)
        except DamagedStoreError as e:
            faults.append(Fault(str(path), str(e).removeprefix(f"{path} is damaged: "), k))
            continue
        if by_index is not None:
            check_marker_in_plan(run_id, k, marker, by_index)
        if not complete:
            faults.append(Fault(f"{store.zarr_path}/{run_id}", "activation template missing", k))
            continue
        shard_faults = _array_faults(store, run_id, gone, k)
        if zarr_dir is not None:
            for _, chunk, size, at in _chunk_files(group, zarr_dir,
                                                   marker["start"], marker["stop"], present):
                shard_faults += _stat_faults(chunk, size, k, at)
        if shard_faults:
            faults += shard_faults
        else:
            trusted.add(k)
    return trusted, faults


def kept_no_activations(store: Store, run_id: str) -> bool:
    """Whether the run's readable request marks it stats-only (``bfd audit
    --no-store-activations``), or its activations were dropped (``bfd drop-activations``):
    its results and tables are all it has."""
    from .drop import dropped
    from .runs import is_stats_only, read_request

    if dropped(store, run_id) is not None:
        return True
    try:
        return is_stats_only(read_request(store, run_id).extra)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def weights_gone(store: Store, run_id: str) -> str | None:
    """Why the run's weights file would not re-create the run, in one line: it is not there
    (seen from this folder) or holds other bytes than its ``weights_sha256``; None for
    pretrained or random weights, an unchanged file, or a request that cannot be read."""
    from bfd.files import sha256_file

    from .runs import read_request

    try:
        req = read_request(store, run_id)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if req.weights in ("pretrained", "random"):
        return None
    made = f"run {run_id} was made from weights of sha256 {req.weights_sha256[:12]}..."
    if not os.path.isfile(req.weights):
        return (f"its weights file {req.weights!r} is not there (seen from {os.getcwd()}); "
                f"{made}: give that file's path to --weights")
    now = sha256_file(req.weights)
    if now != req.weights_sha256:
        return (f"its weights file {req.weights!r} now holds other bytes (sha256 {now[:12]}...); "
                f"{made}: with these it makes another run, not this one")
    return None


def check_intact(store: Store, run_id: str) -> None:
    """Refuse a run whose request or image manifest is not JSON, or whose marked shards fail
    the cheap check (see ``trusted_shards``).

    Raises:
        DamagedStoreError: Naming the first damaged file, how many more there are, and the
            command that repairs the run.
    """
    faults = []
    for name in ("request.json", "images.json"):
        path = store.run_dir(run_id) / name
        try:
            read_json(path)
        except FileNotFoundError:
            pass  # the command that needs it says so
        except DamagedStoreError:
            faults.append(Fault(str(path), "damaged: not a JSON file"))
    faults += trusted_shards(store, run_id)[1]
    group = _open_group(store, run_id, "r")
    if group is not None and TEMPLATE_ATTR in group.attrs:  # also before any shard is done
        faults += _array_faults(store, run_id, missing_arrays(group))
    if faults:
        from .fault_lines import distinct
        from .repair import repair_command

        faults = distinct(faults)
        more = f" (and {len(faults) - 1} more; bfd verify {run_id} lists them)" \
            if len(faults) > 1 else ""
        raise DamagedStoreError(
            f"run {run_id} is damaged: {faults[0]}{more}; repair it with: "
            f"{repair_command(store, run_id)}"
        )


def _table_files(store: Store, run_id: str, pointer: dict | None) -> dict[str, Path]:
    """The run's published table files by table: those its pointer lists, or the older
    layout's (no pointer)."""
    if pointer is not None:
        return {t: store.root / rel for t, rel in pointer["tables"].items()}
    return legacy_table_files(store, run_id, TABLE_SCHEMAS)


def unchecked_tables(store: Store, run_id: str) -> list[str]:
    """The tables of the run whose file's bytes ``table_faults`` cannot check, sorted: its
    pointer records no sha256 of them (a pointer written by an older bfd, before they were
    kept), or it has none (the older layout: every table file). [] when every one is
    checked, the run has no table files, or its pointer does not read (a fault)."""
    from .published import read_pointer
    from .recorded import recorded_sha256

    try:
        pointer = read_pointer(store, run_id)
    except ValueError:
        return []
    return sorted(t for t in _table_files(store, run_id, pointer)
                  if pointer is None or recorded_sha256(pointer, t) is None)


def _few(names: Sequence[str], shown: int = 3) -> str:
    """``a, b, c, ... (36 in all)``: a long list of column names in short."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])}, ... ({len(names)} in all)"


def table_faults(store: Store, run_id: str) -> list[Fault]:
    """The faults of the run's published table files (those its pointer lists, or the older
    layout's): each file is read whole, and its bytes are compared with the sha256 its
    pointer records (none in pointers written before they were kept, nor in the older layout:
    such a file is only read: ``unchecked_tables``); empty when all are intact or the run
    has none. A file lacking only columns added since bfd's first release (published by an
    older bfd) is a fault with ``older`` true, its bytes still checked where recorded."""
    from .published import read_pointer
    from .recorded import changed_since_published

    try:
        pointer = read_pointer(store, run_id)
    except ValueError as e:
        return [Fault(str(store.published_pointer(run_id)), " ".join(str(e).split()),
                      published=True)]
    files = _table_files(store, run_id, pointer)
    faults = []
    for table, path in sorted(files.items()):
        if not os.path.lexists(path):  # pyarrow's error for a file gone names only the path
            faults.append(Fault(str(path), "missing (the published version's file is gone)",
                                published=True))
            continue
        try:
            names = set(pq.read_table(path).column_names)
        except Exception as e:  # noqa: BLE001 - any read failure is the fault
            faults.append(Fault(str(path), f"unreadable ({_reason(e, str(path))})",
                                published=True))
            continue
        missing = [n for n in TABLE_SCHEMAS[table].names if n not in names] \
            if table in TABLE_SCHEMAS else []
        if missing and added_later(table, missing):
            faults.append(Fault(str(path), (
                f"published by an older bfd: lacks the {len(missing)} column"
                f"{'s' if len(missing) > 1 else ''} added since ({_few(missing)})"),
                published=True, older=True))
        elif missing:
            faults.append(Fault(str(path), f"missing contract columns {missing}",
                                published=True))
            continue
        try:
            changed = changed_since_published(pointer, table, path) if pointer else None
        except OSError as e:
            changed = f"unreadable ({_reason(e, str(path))})"
        if changed:
            faults.append(Fault(str(path), changed, published=True))
    return faults


def _reason(err: Exception, path: str, limit: int = 200) -> str:
    """A read error in one line for a fault of ``path``: the path (the fault names it) left
    out, cut at a sentence's end (or a word's, marked ``...``) to at most ``limit``
    characters."""
    text = " ".join(str(err).replace(f" '{path}'", "").replace(path, "").split())
    if len(text) <= limit:
        return text
    end = text.rfind(". ", 0, limit)
    return text[:end + 1] if end > 0 else text[:text.rfind(" ", 0, limit - 3)] + "..."


def _verify_published(store: Store, run_id: str) -> list[Fault]:
    """The table files of a run that has nothing but them (a stats-only one): published."""
    from .published import read_pointer

    try:
        unpublished = read_pointer(store, run_id) is None and not legacy_table_files(
            store, run_id, TABLE_SCHEMAS)
    except ValueError:
        unpublished = False  # table_faults names the pointer
    if unpublished:
        return [Fault(str(store.published_pointer(run_id)),
                      "never published (a stats-only run keeps nothing else)", published=True)]
    return table_faults(store, run_id)


def _verify_model_tensors(store: Store, run_id: str) -> list[Fault]:
    from .weights import read_model_tensors

    where = f"{store.zarr_path}/{run_id}/model"
    try:
        tensors = read_model_tensors(store, run_id)
    except Exception as e:  # noqa: BLE001 - any read failure is the fault
        return [Fault(where, f"model tensors unreadable ({_reason(e, where)})")]
    bad = [n for n in ("qkv_weight", "attn_scale") if n in tensors
           and not np.isfinite(tensors[n].values).all()]
    return [Fault(where, f"non-finite values in {bad}")] if bad else []


def verify_run(store: Store, run_id: str) -> list[Fault]:
    """Every fault of a run: its request and image manifest, each shard's marker and chunks
    (present, of the right size, readable, finite for the images marked ``ok``), its model
    tensors and every table file of the run (readable, with the contract columns, holding the
    bytes it was published with when its pointer records their sha256). A
    stats-only run (``kept_no_activations``) has no shards: its results must be published.

    Returns:
        The faults, one per damaged file; empty when the run is intact.

    Raises:
        FileNotFoundError: If the store holds nothing of this run, or is not a folder.
        NotAStoreError: If it holds nothing of this run and is a folder of other files
            (``check_store``).
    """
    from .runs import read_request

    run_dir = store.run_dir(run_id)
    group = _open_group(store, run_id, "r")
    if not run_dir.is_dir() and group is None:
        check_store(store.root)  # a folder that is not a store is said so, not "no such run"
        raise FileNotFoundError(f"run {run_id} is not in store {store.root}")
    faults: list[Fault] = []
    try:
        read_request(store, run_id)
    except (OSError, ValueError, KeyError, TypeError) as e:
        faults.append(Fault(str(run_dir / "request.json"), " ".join(str(e).split())))
    images = run_dir / "images.json"
    try:
        read_json(images)
    except (OSError, ValueError) as e:
        faults.append(Fault(str(images), " ".join(str(e).split())))
    if kept_no_activations(store, run_id):
        return faults + _verify_published(store, run_id) + _verify_model_tensors(store, run_id)
    if group is None or TEMPLATE_ATTR not in group.attrs:
        faults.append(Fault(f"{store.zarr_path}/{run_id}", "activation template missing"))
        return faults + table_faults(store, run_id)
    _, cheap = trusted_shards(store, run_id)
    faults += cheap
    damaged = {f.shard for f in cheap}
    markers = marker_files(store, run_id)
    n_images = group.attrs[TEMPLATE_ATTR]["n_images"]
    gone = missing_arrays(group)
    if not markers:  # else a fault of each shard marked done (trusted_shards)
        faults += _array_faults(store, run_id, gone)
    per_shard = None
    verifier = ChunkVerifier(store, group, [s for s in group.attrs[TEMPLATE_ATTR]["sites"]
                                            if s not in gone],
                             raw=store.zarr_dir is not None)
    jobs: list[ChunkJob] = []
    for k, path in sorted(markers.items()):
        try:
            marker = read_marker(path)
        except DamagedStoreError:
            continue
        if k == 0 or (per_shard is None and marker["stop"] < n_images):
            per_shard = marker["stop"] - marker["start"]
        if k not in damaged:
            jobs += verifier.jobs(k, marker)
    pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="bfd-verify")
    try:
        # the small files alongside the chunks
        others = [pool.submit(_verify_model_tensors, store, run_id),
                  pool.submit(table_faults, store, run_id)]
        faults += [f for f in pool.map(verifier.check, jobs) if f is not None]
    finally:
        # on Ctrl-C, only the chunks being read are waited for
        pool.shutdown(cancel_futures=True)
    if not markers:
        faults.append(Fault(str(store.shards_dir(run_id)), "no shard completed"))
    elif per_shard is not None:  # unknown when only the last shard's marker is readable
        missing = sorted(set(range(math.ceil(n_images / per_shard))) - set(markers))
        if missing:
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            faults.append(Fault(str(store.shards_dir(run_id)), (
                f"{len(missing)} shard{'' if len(missing) == 1 else 's'} never completed: "
                f"{', '.join(map(str, missing[:10]))}{more}")))
    return faults + [f for future in others for f in future.result()]
