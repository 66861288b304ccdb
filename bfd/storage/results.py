"""Decomposition results of a run: one xarray Dataset in ``bfd.zarr/<run_id>/results``.

Results are recomputable from the activations, so a write replaces the whole group. That
replacement is not atomic: a reader during a rewrite may see a partial group.
"""

from __future__ import annotations

import xarray as xr

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


def write_results(store: Store, run_id: str, ds: xr.Dataset) -> None:
    """Write (or replace) a run's results Dataset.

    The activations group of the run is left untouched.

    Args:
        store: The store.
        run_id: The run id.
        ds: Results with dims among ``layer, head, mode, block, token, dim``. numpy- or
            dask-backed; dask chunks are written as they are.
    """
    # Encodings carried over from another store (chunks, codecs) must not leak in.
    out = _variable_width_strings(ds).drop_encoding()
    out.to_zarr(
        store.zarr_path,
        group=store.results_group(run_id),
        mode="w",
        zarr_format=3,
        consolidated=False,
    )


def open_results(store: Store, run_id: str) -> xr.Dataset:
    """Open a run's results lazily.

    Args:
        store: The store.
        run_id: The run id.

    Returns:
        The results Dataset (dask-backed, stored chunks).

    Raises:
        FileNotFoundError: If the run has no results.
    """
    try:
        return xr.open_zarr(
            store.zarr_path,
            group=store.results_group(run_id),
            chunks={},
            consolidated=False,
            zarr_format=3,
        )
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"run {run_id} has no results in {store.zarr_path} "
            f"(group {store.results_group(run_id)})"
        ) from e
