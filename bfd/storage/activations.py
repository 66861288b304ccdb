"""Activations in Zarr v3: template once, then fill whole chunks from many workers.

One group per run (``bfd.zarr/<run_id>``), one variable per site with dims
``(layer, image, token, dim)`` and chunks ``(1, images_per_chunk, n_tokens, dim)``
(docs/layout.md). ``create_activation_template`` writes all metadata and coordinates, the
data stay unwritten (they read as NaN, the fill value), and the group attribute
``bfd_template`` is set last: it marks the template complete. ``write_shard`` refuses a group
without it and writes whole chunks only, so concurrent shard writers never share a chunk and
every write can be retried.

Compression: none by default. Measured on this project's 2-core dev box with activation-like
float16 data (12 layers x 128 images x 197 tokens x 384 dims): no codec wrote ~1.3 GB/s and
compressed 1.00x; blosc-lz4+shuffle wrote ~0.5 GB/s at 1.00x; zstd-1 wrote ~0.26 GB/s at 1.06x.
float16 mantissas are noise, so a codec only costs time; ``compression="lz4"`` or ``"zstd"``
remain available (e.g. for float32 or remote stores).
"""

from __future__ import annotations

import operator
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from .guarded import reading
from .paths import Store, validate_run_id
from .results import fixed_width_strings
from .runs import DTYPES, sha256_hex

Compression = Literal["none", "lz4", "zstd"]
COMPRESSIONS: Final[tuple[str, ...]] = ("none", "lz4", "zstd")
DIMS: Final[tuple[str, str, str, str]] = ("layer", "image", "token", "dim")
TEMPLATE_ATTR: Final[str] = "bfd_template"
_COORD_NAMES: Final[frozenset[str]] = frozenset({*DIMS, "token_type", "row", "col"})
_TEMPLATE_VERSION: Final[int] = 1


def _compressors(compression: str) -> list[Any] | None:
    if compression == "none":
        return None
    if compression == "lz4":
        return [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")]
    return [ZstdCodec(level=1)]


def images_per_chunk_for(n_tokens: int, dim: int, dtype: str, target_mib: float = 8.0) -> int:
    """Images per chunk so that one chunk ``(1, ipc, n_tokens, dim)`` is at most ``target_mib``.

    A few MiB per chunk keeps file counts low and reads fast without large worker memory.
    The result is a power of two so that shards line up with the usual batch sizes.
    """
    per_image = n_tokens * dim * np.dtype(dtype).itemsize
    fit = max(1, int(target_mib * 2**20 // per_image))
    return 1 << (fit.bit_length() - 1)


def _open_group(store: Store, run_id: str, mode: Literal["r", "r+"]) -> zarr.Group | None:
    try:
        return zarr.open_group(
            store.zarr_path, path=store.run_group(run_id), mode=mode, zarr_format=3
        )
    except FileNotFoundError:
        return None


def _template_spec(
    *,
    sites: Sequence[str],
    layers: Sequence[int],
    n_images: int,
    image_ids: Sequence[str],
    token_types: Sequence[str],
    rows: Sequence[int],
    cols: Sequence[int],
    dim: int,
    dtype: str,
    images_per_chunk: int,
    compression: str,
    attrs: Mapping[str, Any],
) -> dict[str, Any]:
    # Long lists go in as hashes: the spec lives in group attrs and must stay small.
    return {
        "version": _TEMPLATE_VERSION,
        "sites": list(sites),
        "layers": list(layers),
        "n_images": n_images,
        "image_ids_sha256": sha256_hex(list(image_ids)),
        "n_tokens": len(token_types),
        "tokens_sha256": sha256_hex([list(token_types), list(rows), list(cols)]),
        "dim": dim,
        "dtype": dtype,
        "images_per_chunk": images_per_chunk,
        "compression": compression,
        "attrs_sha256": sha256_hex(dict(attrs)),
    }


def _validate_template_args(
    sites: Sequence[str],
    layers: Sequence[int],
    n_images: int,
    image_ids: Sequence[str],
    token_types: Sequence[str],
    rows: Sequence[int],
    cols: Sequence[int],
    dim: int,
    dtype: str,
    images_per_chunk: int,
    compression: str,
) -> None:
    if not sites or len(set(sites)) != len(sites):
        raise ValueError(f"sites must be unique and non-empty, got {list(sites)}")
    for s in sites:
        if not isinstance(s, str) or not s.isidentifier() or s in _COORD_NAMES:
            raise ValueError(f"site {s!r} must be an identifier other than {sorted(_COORD_NAMES)}")
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be unique and non-empty, got {list(layers)}")
    if n_images < 1 or len(image_ids) != n_images:
        raise ValueError(
            f"expected n_images >= 1 image ids, got n_images={n_images} and "
            f"{len(image_ids)} image_ids"
        )
    if len(set(image_ids)) != n_images:
        raise ValueError("image_ids must be unique (they index the 'image' dimension)")
    n_tokens = len(token_types)
    if n_tokens < 1 or len(rows) != n_tokens or len(cols) != n_tokens:
        raise ValueError(
            f"token_types, rows, cols must have one entry per token, got lengths "
            f"{len(token_types)}, {len(rows)}, {len(cols)}"
        )
    for t, (kind, r, c) in enumerate(zip(token_types, rows, cols, strict=True)):
        on_grid = kind == "patch"
        if on_grid != (r >= 0 and c >= 0) or (not on_grid and (r, c) != (-1, -1)):
            raise ValueError(
                f"token {t}: type {kind!r} with row={r}, col={c}; expected "
                "row, col >= 0 for 'patch' and -1, -1 for prefix tokens"
            )
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if images_per_chunk < 1:
        raise ValueError(f"images_per_chunk must be >= 1, got {images_per_chunk}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")


def _template_dataset(sites: Sequence[str], layers: Sequence[int], n_images: int,
                      image_ids: Sequence[str], token_types: Sequence[str], rows: Sequence[int],
                      cols: Sequence[int], dim: int, dtype: str, images_per_chunk: int,
                      compression: str) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The template's Dataset of ``sites`` (never computed) and its Zarr encoding."""
    n_tokens = len(token_types)
    chunks = (1, images_per_chunk, n_tokens, dim)
    shape = (len(layers), n_images, n_tokens, dim)
    # The dask arrays are never computed: with compute=False only metadata and the small
    # numpy coordinates are written; data chunks stay absent and read as the NaN fill.
    # One dask chunk for the whole array keeps the graph tiny (a chunk per Zarr chunk took
    # seconds for 50k images); it covers whole Zarr chunks, so xarray accepts it.
    import dask.array as da  # here: an integrity check of the store need not import dask

    data_vars = {s: (DIMS, da.full(shape, np.nan, dtype=dtype, chunks=shape)) for s in sites}
    ds = xr.Dataset(
        data_vars,
        coords={
            "layer": ("layer", np.asarray(layers, dtype=np.int32)),
            "image": ("image", np.asarray(image_ids, dtype=object)),
            "token": ("token", np.arange(n_tokens, dtype=np.int32)),
            "token_type": ("token", np.asarray(token_types, dtype=object)),
            "row": ("token", np.asarray(rows, dtype=np.int32)),
            "col": ("token", np.asarray(cols, dtype=np.int32)),
        },
    )
    encoding = {
        s: {"chunks": chunks, "fill_value": np.nan, "compressors": _compressors(compression)}
        for s in sites
    }
    return ds, encoding


def _make_arrays_again(store: Store, run_id: str, ds: xr.Dataset,
                       encoding: dict[str, dict[str, Any]]) -> None:
    """Writes the metadata of the activation arrays of ``ds`` (those deleted from the run's
    group) as the template wrote it: the Dataset is written to memory by xarray, and each
    array made again in the store from what xarray wrote (its fill value, attributes and
    dimension names; the group's own attributes, the template marker among them, are kept:
    xarray's write to the group would replace them)."""
    from zarr.storage import MemoryStore

    memory = MemoryStore()
    ds.to_zarr(memory, mode="w-", compute=False, encoding=encoding, zarr_format=3,
               consolidated=False)
    made = zarr.open_group(memory, mode="r", zarr_format=3)
    group = zarr.open_group(store.zarr_path, path=store.run_group(run_id), mode="r+",
                            zarr_format=3)
    for site in encoding:
        src = made[site]
        group.create_array(site, shape=src.shape, dtype=src.dtype, chunks=src.chunks,
                           fill_value=src.fill_value, compressors=src.compressors,
                           filters=src.filters, serializer=src.serializer,
                           attributes=dict(src.attrs),
                           dimension_names=src.metadata.dimension_names)


def create_activation_template(
    store: Store,
    run_id: str,
    *,
    sites: Sequence[str],
    layers: Sequence[int],
    n_images: int,
    image_ids: Sequence[str],
    token_types: Sequence[str],
    rows: Sequence[int],
    cols: Sequence[int],
    dim: int,
    dtype: Literal["float16", "float32"],
    images_per_chunk: int,
    attrs: Mapping[str, Any],
    compression: Compression = "none",
) -> None:
    """Write the metadata of a run's activation group; idempotent, never wipes data.

    Call it once from the orchestrator before any worker writes. If the run's group already
    holds a complete template with the same arguments, nothing happens; written chunks stay.
    An activation array of it that is gone (its folder deleted by hand) is made again, empty:
    extraction finds no shard of it intact (``bfd.storage.trusted_shards``) and extracts all.

    Args:
        store: The store.
        run_id: The run id (the group name).
        sites: Activation sites; one data variable each.
        layers: Block indices (the ``layer`` coordinate).
        n_images: Number of images.
        image_ids: Image ids, one per image (the ``image`` coordinate); unique.
        token_types: ``"cls"``, ``"register"`` or ``"patch"`` per token (coordinate on token).
        rows: Grid row per token, -1 for prefix tokens.
        cols: Grid column per token, -1 for prefix tokens.
        dim: Model width d.
        dtype: ``"float16"`` or ``"float32"``.
        images_per_chunk: Chunk length along ``image``.
        attrs: Dataset attributes (docs/layout.md lists them), JSON-serialisable and
            deterministic: a timestamp here would make every resume a "different template".
        compression: ``"none"`` (default, see module docstring), ``"lz4"`` or ``"zstd"``.

    Raises:
        ValueError: If an argument is malformed, or the group exists with a different
            template (the message names the differing fields).
    """
    validate_run_id(run_id)
    # Plain Python values only: the spec is hashed as JSON and stored in group attrs.
    n_images, dim = operator.index(n_images), operator.index(dim)
    images_per_chunk = operator.index(images_per_chunk)
    try:
        dtype = np.dtype(dtype).name  # type: ignore[assignment]
    except TypeError as e:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}") from e
    sites, layers = list(sites), [int(x) for x in layers]
    rows, cols = [int(x) for x in rows], [int(x) for x in cols]
    image_ids, token_types = [str(x) for x in image_ids], [str(x) for x in token_types]
    _validate_template_args(
        sites,
        layers,
        n_images,
        image_ids,
        token_types,
        rows,
        cols,
        dim,
        dtype,
        images_per_chunk,
        compression,
    )
    if "run_id" in attrs and attrs["run_id"] != run_id:
        raise ValueError(f"attrs['run_id']={attrs['run_id']!r} differs from run_id={run_id!r}")
    attrs = {**attrs, "run_id": run_id}
    spec = _template_spec(
        sites=sites,
        layers=layers,
        n_images=n_images,
        image_ids=image_ids,
        token_types=token_types,
        rows=rows,
        cols=cols,
        dim=dim,
        dtype=dtype,
        images_per_chunk=images_per_chunk,
        compression=compression,
        attrs=attrs,
    )

    group = _open_group(store, run_id, "r")
    if group is not None and TEMPLATE_ATTR in group.attrs:
        stored = dict(group.attrs[TEMPLATE_ATTR])
        if stored == spec:
            gone = [site for site in sites if site not in group]
            if gone:  # deleted by hand: made again, empty (every shard is extracted again)
                ds, encoding = _template_dataset(gone, layers, n_images, image_ids,
                                                 token_types, rows, cols, dim, dtype,
                                                 images_per_chunk, compression)
                _make_arrays_again(store, run_id, ds, encoding)
            return
        diff = {k: (stored.get(k), spec[k]) for k in spec if stored.get(k) != spec[k]}
        raise ValueError(
            f"run {run_id} already has an activation template that differs in "
            f"{sorted(diff)} (stored, given): {diff}; refusing to overwrite data"
        )

    ds, encoding = _template_dataset(sites, layers, n_images, image_ids, token_types, rows,
                                     cols, dim, dtype, images_per_chunk, compression)
    # A group without the marker is an interrupted template: no shard can have written
    # into it (write_shard requires the marker), so replacing it loses nothing.
    ds.to_zarr(
        store.zarr_path,
        group=store.run_group(run_id),
        mode="w-" if group is None else "w",
        compute=False,
        encoding=encoding,
        zarr_format=3,
        consolidated=False,
    )
    group = zarr.open_group(store.zarr_path, path=store.run_group(run_id), mode="r+", zarr_format=3)
    group.attrs.update({**attrs, TEMPLATE_ATTR: spec})


def write_shard(
    store: Store, run_id: str, site: str, start: int, stop: int, data: np.ndarray
) -> None:
    """Write images ``start:stop`` of one site, all layers; whole chunks only.

    Idempotent: writing the same shard again gives the same store.

    Args:
        store: The store.
        run_id: The run id; its template must be complete.
        site: Data variable to write, e.g. ``"attn_in"``.
        start: First image; a multiple of images_per_chunk.
        stop: One past the last image; a multiple of images_per_chunk or n_images.
        data: Array ``(n_layers, stop - start, n_tokens, dim)``, layers in template order.
            Other float dtypes are cast to the stored dtype.

    Raises:
        FileNotFoundError: If the run has no complete template.
        ValueError: If ``site`` is unknown, the range is not chunk-aligned, or ``data`` has
            the wrong shape.
    """
    group = _open_group(store, run_id, "r+")
    if group is None or TEMPLATE_ATTR not in group.attrs:
        raise FileNotFoundError(
            f"run {run_id} has no complete activation template in "
            f"{store.zarr_path}; call create_activation_template first"
        )
    sites = group.attrs[TEMPLATE_ATTR]["sites"]
    if site not in sites:
        raise ValueError(f"site {site!r} not in run {run_id}; it has {sites}")
    array = group[site]
    n_layers, n_images, n_tokens, dim = array.shape
    ipc = array.chunks[1]
    if not (0 <= start < stop <= n_images) or start % ipc or (stop % ipc and stop != n_images):
        raise ValueError(
            f"shard {start}:{stop} is not chunk-aligned: expected start a multiple of "
            f"images_per_chunk={ipc}, stop a multiple of it or n_images={n_images}, "
            "0 <= start < stop <= n_images"
        )
    expected = (n_layers, stop - start, n_tokens, dim)
    if data.shape != expected:
        raise ValueError(
            f"data for {site}[{start}:{stop}] has shape {data.shape}, expected "
            f"{expected} (layer, image, token, dim)"
        )
    folder = _chunk_folder(array) if DIRECT_WRITES else None
    if folder is not None:
        _write_chunks(array, folder, start, np.asarray(data, dtype=array.dtype))
        return
    # Skipping the all-NaN check costs nothing in correctness (a NaN chunk reads as NaN
    # either way) and is 5x faster for float16, where numpy's isnan is slow.
    array = array.with_config({"write_empty_chunks": True})
    array[:, start:stop] = data


# Whether write_shard writes the chunk files of a local, uncompressed array itself
# (``_write_chunks``); bench/extract.py turns it off to time Zarr's own writes in the same run.
DIRECT_WRITES = True


def _chunk_folder(array: zarr.Array) -> Path | None:
    """The folder of ``array``'s chunk files where ``write_shard`` writes them itself, or None.

    Only where a chunk's file is the chunk's raw bytes: a local store, Zarr v3, no filter or
    compressor, the ``bytes`` codec in this machine's byte order, the default ``c/...`` keys.
    Zarr's own write of such a chunk passes through its one event-loop thread and copies the
    bytes; beside a GPU's forwards, decoding threads and other writer threads, that held the
    GIL for 3.4 s of thread time where the same bytes alone took 0.83 s (bench/README.md).
    """
    from zarr.codecs import BytesCodec
    from zarr.storage import LocalStore

    meta = array.metadata
    if not isinstance(array.store, LocalStore) or meta.zarr_format != 3:
        return None
    if array.chunks[0] != 1 or array.chunks[2:] != array.shape[2:]:  # as the template makes
        return None
    codecs = meta.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
        return None
    endian = codecs[0].endian
    if array.dtype.itemsize > 1 and (endian is None or endian.value != sys.byteorder):
        return None
    keys = meta.chunk_key_encoding
    if keys.to_dict() != {"name": "default", "configuration": {"separator": "/"}}:
        return None
    return Path(array.store.root) / array.path


def _write_chunks(array: zarr.Array, folder: Path, start: int, data: np.ndarray) -> None:
    """Write the whole chunks of images ``start:start + len`` of every layer as Zarr would
    (tests/test_storage.py compares the files byte for byte): each chunk's C-order bytes, a
    chunk past the last image filled with the fill value, each file written beside its place
    and renamed onto it, so that a reader or a crash never leaves part of a chunk."""
    ipc = array.chunks[1]
    keys = array.metadata.chunk_key_encoding
    for layer in range(data.shape[0]):
        for a in range(0, data.shape[1], ipc):
            chunk = data[layer, a:a + ipc]
            if len(chunk) < ipc:  # the array's last chunk, past its last image
                full = np.full((ipc, *chunk.shape[1:]), array.fill_value, dtype=array.dtype)
                full[:len(chunk)] = chunk
                chunk = full
            path = folder / keys.encode_chunk_key((layer, (start + a) // ipc, 0, 0))
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")  # as Zarr names it
            try:
                with partial.open("wb") as f:
                    f.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                partial.replace(path)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise


def open_activations(store: Store, run_id: str) -> xr.Dataset:
    """Open a run's activations lazily, one dask chunk per stored chunk.

    Args:
        store: The store.
        run_id: The run id.

    Returns:
        Dataset with one variable per site, dims ``(layer, image, token, dim)``, coords
        ``layer, image, token, token_type, row, col`` and the run's attrs. Unwritten
        images read as NaN. Once another process drops the activations (``bfd
        drop-activations``), reading a value not read yet raises ``VersionRemovedError``
        (a ``FileNotFoundError``; on a local store: ``bfd.storage.guarded``), not NaN.
        In the stored dtype: of a float16 run, dask reduces in float16, so a mean or sum
        over more than 65,504 values reads 0, inf or NaN; ``.astype("float32")`` first.

    Raises:
        FileNotFoundError: If the run has no complete template.
    """
    group = _open_group(store, run_id, "r")
    if group is None or TEMPLATE_ATTR not in group.attrs:
        raise FileNotFoundError(
            f"run {run_id} has no activations in {store.zarr_path}; runs there: {list_runs(store)}"
        )
    return fixed_width_strings(xr.open_zarr(
        reading(store.zarr_dir, store.zarr_path), group=store.run_group(run_id), chunks={},
        consolidated=False, zarr_format=3
    ))


def list_runs(store: Store) -> list[str]:
    """Ids of the runs with a complete activation template, sorted."""
    try:
        root = zarr.open_group(store.zarr_path, mode="r", zarr_format=3)
    except FileNotFoundError:
        return []
    return sorted(name for name, group in root.groups() if TEMPLATE_ATTR in group.attrs)
