"""Parquet result tables: column contract and types (docs/layout.md).

Every file holds all contract columns of its table, ``model`` and ``run_id`` included, in a
folder per run whose name is the bare run id (no Hive ``key=value`` folders, so no reader
derives a partition column that collides with the file's own). Column types are fixed here;
extra columns are kept after the contract ones ("add columns, never rename"). Undefined
floating values (NaN) are written as NULL. ``sites`` and ``layers`` of the ``runs`` table are
comma-joined strings (``"attn_in,resid"``, ``"0,1,2"``): plain text filters in SQL, and no
list types for dashboards to unnest.

Where the files go and how a run's tables are switched at once: ``published.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.compute as pc

from .paths import Store, validate_run_id

_S, _I32, _I64, _F64 = pa.string(), pa.int32(), pa.int64(), pa.float64()
_TS: Final = pa.timestamp("us", tz="UTC")


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(name, type_) for name, type_ in fields])


_ENERGIES: Final = [("e_pp", _F64), ("e_pc", _F64), ("e_cp", _F64), ("e_cc", _F64)]

# The tables published per run, together, as one version that a pointer names
# (``published.py``). A table of TABLE_SCHEMAS outside this list (e.g. an append-only log)
# is read as every file under ``tables/<table>/``.
RUN_TABLES: Final[tuple[str, ...]] = ("runs", "layers", "heads", "modes", "images")
# docs/method.md, "Chance-corrected shares", "Uncertainty" and "Sample-size adequacy"
_SHARES: Final = ("frac_pos", "frac_img", "frac_int", "frac_content")
_LAYER_STATS: Final = [
    *((f"{s}_adj", _F64) for s in _SHARES), ("frac_pos_chance", _F64),
    *((f"{s}{a}_{k}", _F64) for a in ("", "_adj") for s in _SHARES for k in ("se", "lo", "hi")),
    ("ci_halfwidth", _F64), ("n_images_for_target", _F64), ("ci_target", _F64),
]
_HEAD_STATS: Final = [
    *((f"e_{b}_adj", _F64) for b in ("pp", "pc", "cp", "cc")),
    *((f"f_{b}_adj", _F64) for b in ("pp", "pc", "cp", "cc")),
    *((f"f_{b}{a}_{k}", _F64) for a in ("", "_adj") for b in ("pp", "pc", "cp", "cc")
      for k in ("se", "lo", "hi")),
    ("head_type_stability", _F64),
]

TABLE_SCHEMAS: Final[dict[str, pa.Schema]] = {
    "runs": _schema(
        ("run_id", _S),
        ("model", _S),
        ("weights", _S),
        ("weights_sha256", _S),
        ("images", _S),
        ("images_sha256", _S),
        ("n_images", _I64),
        ("n_skipped", _I64),
        ("img_size", _I32),
        ("grid_h", _I32),
        ("grid_w", _I32),
        ("prefix_tokens", _I32),
        ("sites", _S),
        ("layers", _S),
        ("dtype", _S),
        ("created_at", _TS),
        ("bfd_version", _S),
        ("timm_version", _S),
        ("torch_version", _S),
        ("config_json", _S),
        ("status", _S),
        ("depth", _I32),
        ("num_heads", _I32),
        ("width", _I32),
    ),
    "layers": _schema(
        ("run_id", _S),
        ("model", _S),
        ("layer", _I32),
        ("site", _S),
        ("ss_total", _F64),
        ("frac_pos", _F64),
        ("frac_img", _F64),
        ("frac_int", _F64),
        ("pos_split_half_r", _F64),
        ("pos_embed_cos", _F64),
        ("shuffle_frac_pos", _F64),
        ("ss_identity_residual", _F64),
        ("ortho_residual", _F64),
        ("frac_content", _F64),
        ("logit_residual", _F64),
        ("n_images", _I64),
        ("model_logit_residual", _F64),
        ("model_attn_residual", _F64),
        *_LAYER_STATS,
    ),
    "heads": _schema(
        ("run_id", _S),
        ("model", _S),
        ("layer", _I32),
        ("head", _I32),
        *_ENERGIES,
        ("f_pp", _F64),
        ("f_pc", _F64),
        ("f_cp", _F64),
        ("f_cc", _F64),
        ("head_type", _S),
        ("eff_rank", _F64),
        ("eff_rank_sigma", _F64),
        ("k90", _I32),
        ("mode_coupling", _F64),
        ("bias_key_share", _F64),
        ("bias_key_pos_share", _F64),
        ("bias_key_con_share", _F64),
        *_HEAD_STATS,
    ),
    "modes": _schema(
        ("run_id", _S),
        ("model", _S),
        ("layer", _I32),
        ("head", _I32),
        ("mode", _I32),
        ("sigma", _F64),
        ("alpha", _F64),
        ("beta", _F64),
        *_ENERGIES,
        ("mode_type", _S),
    ),
    "images": _schema(
        ("run_id", _S),
        ("model", _S),
        ("image_index", _I32),
        ("image_id", _S),
        ("sha256", _S),
        ("status", _S),
        ("error", _S),
    ),
}

# The columns of each run table that bfd has written from its first release on (2026-11-26);
# every other contract column was added later ("add columns, never rename"). A table file
# that holds all of these and lacks only some later ones was published by an older bfd: it
# is read as it is (the catalog gives the columns it lacks as NULL), and ``bfd decompose
# RUN`` publishes the run again with them; one that lacks any of these is damaged
# (``bfd.storage.integrity.table_faults``). A table not listed has had all its columns since.
FIRST_COLUMNS: Final[dict[str, frozenset[str]]] = {
    "runs": frozenset({
        "run_id", "model", "weights", "weights_sha256", "images", "images_sha256", "n_images",
        "n_skipped", "img_size", "grid_h", "grid_w", "prefix_tokens", "sites", "layers",
        "dtype", "created_at", "bfd_version", "timm_version", "torch_version", "config_json",
        "status"}),
    "layers": frozenset({
        "run_id", "model", "layer", "site", "ss_total", "frac_pos", "frac_img", "frac_int",
        "pos_split_half_r", "pos_embed_cos", "shuffle_frac_pos", "ss_identity_residual",
        "ortho_residual"}),
    "heads": frozenset({
        "run_id", "model", "layer", "head", *(name for name, _ in _ENERGIES), "f_pp", "f_pc",
        "f_cp", "f_cc", "head_type", "eff_rank", "eff_rank_sigma", "k90", "mode_coupling"}),
}


def added_later(table: str, missing: Sequence[str]) -> bool:
    """Whether the contract columns ``missing`` of a file of ``table`` (none of them of
    ``FIRST_COLUMNS``) are all columns added since bfd's first release: the file was
    published by an older bfd, not damaged."""
    first = FIRST_COLUMNS.get(table, frozenset(TABLE_SCHEMAS[table].names))
    return bool(missing) and not first.intersection(missing)


def partition_value(value: str) -> str:
    """Escape a partition value for a directory name, reversibly (``unquote`` undoes it).

    Everything but letters, digits and ``_.-~`` is percent-encoded, so ``hf-hub:timm/x``
    becomes ``hf-hub%3Atimm%2Fx``: no ``/``, ``=`` or ``:`` reaches the path.

    Raises:
        ValueError: If the value is empty, ``.`` or ``..``.
    """
    if value in ("", ".", ".."):
        raise ValueError(f"partition value must not be empty, '.' or '..', got {value!r}")
    return quote(value, safe="")


def unescape_partition_value(text: str) -> str:
    """Inverse of ``partition_value``."""
    return unquote(text)


# A zero-row Parquet file of a table's columns, the first of its folder ("!" sorts before
# every run id, model=, series and audit file name, which never hold one): pandas, pyarrow
# and polars take the columns of the first file they read, so they read every column of the
# table also where files written before a column was added lack it (trial 29: polars
# refused an upgraded store's audits, pandas dropped their new columns). No rows: what every
# reader reads stays the data files' rows. bfd's own readers skip it (they read run folders
# and series folders only; the SQL catalog reads its zero rows).
COLUMNS_FILE: Final[str] = "!schema.parquet"


def keep_columns_file(folder: Path, schema: pa.Schema) -> None:
    """Gives ``folder``'s columns file (``COLUMNS_FILE``) the fields of ``schema`` it lacks,
    after its own (written when missing or unreadable; nothing when it has them all)."""
    import pyarrow.parquet as pq

    from .paths import atomic_write

    path = folder / COLUMNS_FILE
    try:
        known = list(pq.read_schema(path))
    except FileNotFoundError:
        known = None
    except (pa.ArrowException, OSError):  # damaged: written again
        known = None
    names = {f.name for f in known or []}
    new = [f for f in schema if f.name not in names]
    if known is not None and not new:
        return
    merged = pa.schema((known or []) + new)
    atomic_write(path, lambda f: pq.write_table(merged.empty_table(), f, compression="zstd"))


def table_path(store: Store, table: str, run_id: str, version: str) -> Path:
    """The Parquet file of one run's table in one published version (docs/layout.md)."""
    _check_table(table)
    return store.table_dir(table) / validate_run_id(run_id) / f"part-{version}.parquet"


def table_glob(store: Store, table: str) -> str:
    """Glob of every table file of the current layout, for tools that read a folder.

    It also matches a version still being published, or one left by a killed publish until
    the run is published again; ``bfd.queries.connect`` and ``read_table`` read the published
    versions only. Temporary files (hidden, ending in ``.tmp``) never match it.
    """
    _check_table(table)
    return str(store.table_dir(table) / "*" / "part-*.parquet")


def _check_table(table: str) -> None:
    if table not in TABLE_SCHEMAS:
        raise ValueError(f"unknown table {table!r}; expected one of {sorted(TABLE_SCHEMAS)}")


def _to_arrow(rows: Any, schema: pa.Schema) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, Sequence) and not isinstance(rows, str | bytes):
        if not rows:
            return schema.empty_table()
        if not all(isinstance(r, Mapping) for r in rows):
            raise TypeError("rows as a list must hold one mapping per row")
        names = list(dict.fromkeys(k for r in rows for k in r))
        arrays = []
        for name in names:
            values = [r.get(name) for r in rows]
            # Contract columns are built in their type at once, so a bad value is reported
            # against its column instead of failing type inference.
            type_ = schema.field(name).type if name in schema.names else None
            try:
                arrays.append(pa.array(values, type=type_))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
                raise ValueError(
                    f"column {name!r}: values cannot be stored as {type_ or 'one Arrow type'}: {e}"
                ) from e
        return pa.Table.from_arrays(arrays, names=names)
    import pandas as pd  # only here: pandas is a dependency of xarray, not of this module

    if isinstance(rows, pd.DataFrame):
        return pa.Table.from_pandas(rows, preserve_index=False)
    raise TypeError(
        f"rows must be a pyarrow.Table, a list of dicts or a pandas.DataFrame, "
        f"got {type(rows).__name__}"
    )


def _nan_to_null(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    return pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)


def conform(table: str, model: str, run_id: str, rows: Any) -> pa.Table:
    """Rows as an Arrow table with the contract columns first, in contract types.

    ``model`` and ``run_id`` columns are filled in when absent.

    Args:
        table: Table name, a key of ``TABLE_SCHEMAS``.
        model: Model name of the partition.
        run_id: Run id of the partition.
        rows: ``pyarrow.Table``, list of dicts or ``pandas.DataFrame``.

    Returns:
        The conformed table; extra columns follow the contract columns unchanged.

    Raises:
        ValueError: If a contract column is missing or cannot be cast to its type, or the
            ``model``/``run_id`` columns disagree with the arguments.
    """
    _check_table(table)
    schema = TABLE_SCHEMAS[table]
    data = _to_arrow(rows, schema)
    for name, value in (("model", model), ("run_id", run_id)):
        if name not in data.column_names:
            data = data.append_column(name, pa.array([value] * data.num_rows, pa.string()))
    present = set(data.column_names)
    missing = [f.name for f in schema if f.name not in present]
    if missing:
        raise ValueError(
            f"table {table!r}: missing column(s) {missing}; got "
            f"{data.column_names}, expected at least {schema.names}"
        )
    columns, fields = [], []
    for f in schema:
        column = data.column(f.name)
        try:
            # Sub-microsecond truncation of timestamps is harmless; everything else is safe.
            column = column.cast(f.type, safe=not pa.types.is_timestamp(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(
                f"table {table!r}: column {f.name!r} of type {column.type} "
                f"cannot be cast to {f.type}: {e}"
            ) from e
        columns.append(column)
        fields.append(f)
    for name in data.column_names:
        if name not in schema.names:
            columns.append(data.column(name))
            fields.append(data.schema.field(name))
    # Undefined values are NULL, so that SQL counts and averages only defined ones.
    columns = [_nan_to_null(c) if pa.types.is_floating(c.type) else c for c in columns]
    out = pa.Table.from_arrays(columns, schema=pa.schema(fields))
    for name, value in (("model", model), ("run_id", run_id)):
        if out.num_rows and set(out.column(name).to_pylist()) != {value}:
            raise ValueError(
                f"table {table!r}: column {name!r} must be {value!r} in every "
                f"row, got {sorted(set(map(str, out.column(name).to_pylist())))}"
            )
    return out
