"""Decomposition results of a run: one xarray Dataset per published version, in the Zarr group
``bfd.zarr/<run_id>/results-<version>`` (``bfd.zarr/<run_id>/results`` in stores written
before versioned publishing). Which version is the run's is said by its pointer
(``published.py``); this module only writes, opens and removes groups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from .guarded import reading, remove_node
from .paths import Store


def _variable_width_strings(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width ``<U`` arrays as object strings.

    Zarr v3 stores ``<U`` as an unspecified data type (it warns); object strings become the
    variable-length ``string`` type that other Zarr readers understand.
    """
    fixed = [name for name, var in ds.variables.items() if var.dtype.kind == "U"]
    if not fixed:
        return ds
    return ds.assign(
        {name: ds[name].astype(object) for name in fixed if name in ds.data_vars}
    ).assign_coords({name: ds[name].astype(object) for name in fixed if name in ds.coords})


def fixed_width_strings(ds: xr.Dataset) -> xr.Dataset:
    """The strings of an opened Dataset as fixed-width ``<U`` arrays (read whole: labels,
    ids and types, small beside the figures).

    Zarr 3 reads its ``string`` type as numpy's ``StringDType``, which ``.astype(str)``
    refuses ("cannot cast ... with an unspecified size") and which older tools do not know;
    ``<U`` is what numpy, pandas and netCDF have always read."""
    variable = [name for name, var in ds.variables.items() if var.dtype.kind == "T"]
    if not variable:
        return ds
    fixed = {}
    for name in variable:
        values = np.asarray(ds[name].values)
        width = max((len(v) for v in values.ravel()), default=1) or 1
        fixed[name] = ds[name].copy(data=values.astype(f"<U{width}"))
    return ds.assign({k: v for k, v in fixed.items() if k in ds.data_vars}).assign_coords(
        {k: v for k, v in fixed.items() if k in ds.coords})


def write_results_group(store: Store, group: str, ds: xr.Dataset) -> None:
    """Write (or replace) one results group; the run's activations are left untouched.

    Args:
        store: The store.
        group: Path of the group in the Zarr store (``Store.results_group``).
        ds: Results with dims among ``layer, head, mode, block, token, dim``. numpy- or
            dask-backed; dask chunks are written as they are.
    """
    # Encodings carried over from another store (chunks, codecs) must not leak in.
    out = _variable_width_strings(ds).drop_encoding()
    out.to_zarr(store.zarr_path, group=group, mode="w", zarr_format=3, consolidated=False)


def open_results_group(store: Store, group: str, dask: bool = True) -> xr.Dataset:
    """Open one results group lazily: dask-backed in its stored chunks, or (``dask=False``)
    each variable read whole when its values are first asked for, which is several times
    faster for a reader of many small variables.

    The Dataset reads the group while it exists: once another process removes it (the run
    published again), reading a value not read yet raises ``VersionRemovedError`` (a
    ``FileNotFoundError``; on a local store: ``bfd.storage.guarded``); ``.load()`` it first
    to keep it.

    Raises:
        FileNotFoundError: If the group does not exist.
    """
    try:
        return fixed_width_strings(xr.open_zarr(
            reading(store.zarr_dir, store.zarr_path), group=group, chunks={} if dask else None,
            consolidated=False, zarr_format=3))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no results group {group} in {store.zarr_path}") from e


def _local_dir(store: Store, group: str) -> Path | None:
    """The folder of a group when the Zarr store is a local directory (None for a URL)."""
    return None if store.zarr_dir is None else store.zarr_dir / group


def results_groups(store: Store, run_id: str) -> list[str]:
    """Paths of every results group of a run, published or not. On a local store the folders
    are listed, not the group's members: a publish killed before it wrote a group's metadata
    leaves a folder that Zarr does not list, and it must be found to be removed."""
    prefix = store.run_group(run_id)
    folder = _local_dir(store, prefix)
    if folder is not None:
        names = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    else:
        try:
            run = zarr.open_group(store.zarr_path, path=prefix, mode="r", zarr_format=3)
        except FileNotFoundError:
            return []
        names = list(run.group_keys())
    return sorted(f"{prefix}/{name}" for name in names
                  if name == "results" or name.startswith("results-"))


def remove_group(store: Store, group: str) -> None:
    """Remove one group of the Zarr store, if it exists (a local folder whole, metadata or
    not; its metadata first)."""
    folder = _local_dir(store, group)
    if folder is not None:
        remove_node(folder)  # its metadata first: a Dataset reading it raises from then on
        return
    parent, _, name = group.rpartition("/")
    try:
        del zarr.open_group(store.zarr_path, path=parent, mode="r+", zarr_format=3)[name]
    except (FileNotFoundError, KeyError):
        pass
