"""Query results written for people and pipes: table, CSV, JSON, JSON Lines and Parquet.

Every writer takes a ``pyarrow.RecordBatchReader`` and writes batch by batch, so a result of
any size needs the memory of one batch. Text formats agree on values: a timestamp is ISO 8601
(``2025-01-02T03:04:05.500000Z`` in UTC when it has a time zone, without the ``Z`` when it has
none), an interval an ISO 8601 duration (``PT83.456S``, ``P1M2D``), and in JSON a NaN or an
infinity, which JSON cannot hold, is ``null`` like SQL NULL.
A nested value (a list, struct, map or union) is a JSON value in JSON and JSON text in CSV
and the table (``[1, 2]``, ``{"a": 1.5}``; its NaN and infinities ``null``, its timestamps ISO
8601). Parquet keeps the result's own types and values.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from typing import BinaryIO, Final

import pyarrow as pa
import pyarrow.compute as pc

from bfd.text import shown

__all__ = ["shown", "stdout_bytes", "write_json_object", "write_result"]

# Rows that fix the column widths of the table format (later rows keep those widths).
_TABLE_WIDTH_ROWS: Final[int] = 1000
_ISO: Final[str] = "%Y-%m-%dT%H:%M:%S"


def _iso(column: pa.Array) -> pa.Array:
    """Timestamps as ISO 8601 strings, in UTC with a ``Z`` when the type has a time zone."""
    if column.type.tz is None:
        return pc.strftime(column, format=_ISO)
    # Arrow holds UTC instants: without its zone a column reads as UTC wall time (and strftime
    # of a zoned column would import pandas).
    utc = column.cast(pa.timestamp(column.type.unit))
    return pc.strftime(utc, format=_ISO + "Z")


def _duration(value: pa.MonthDayNano) -> str:
    """An interval as an ISO 8601 duration: ``P1M2DT3.5S``, ``PT83.456S``, ``P0D`` (a negative
    part keeps its sign: ``PT-5S``)."""
    seconds = format(Decimal(value.nanoseconds).scaleb(-9).normalize(), "f")
    text = "P" + "".join(f"{n}{unit}" for n, unit in ((value.months, "M"), (value.days, "D"))
                         if n)
    text += f"T{seconds}S" if value.nanoseconds else ""
    return text if text != "P" else "P0D"


def _intervals(column: pa.Array) -> pa.Array:
    """An interval column as ISO 8601 durations (``_duration``); NULL stays NULL."""
    text = _strings([_duration(v) if v is not None else "" for v in column.to_pylist()])
    return pc.if_else(column.is_valid(), text, pa.nulls(len(column), pa.string()))


def _text_columns(batch: pa.RecordBatch, *, for_json: bool) -> pa.RecordBatch:
    """Timestamps as ISO strings; for JSON, decimals as numbers and NaN and infinities as null;
    else nested values as JSON text (which the CSV writer cannot write otherwise)."""
    columns = []
    for column in batch.columns:
        if pa.types.is_timestamp(column.type):
            column = _iso(column)
        elif pa.types.is_interval(column.type):  # which neither CSV nor str() writes readably
            column = _intervals(column)
        elif not for_json and pa.types.is_nested(column.type):
            column = _python_json(column)
        elif for_json and pa.types.is_decimal(column.type):
            column = column.cast(pa.float64())
        if for_json and pa.types.is_floating(column.type):
            column = pc.if_else(pc.is_finite(column), column, pa.nulls(len(column), column.type))
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _batches(reader: pa.RecordBatchReader, *, for_json: bool) -> Iterator[pa.RecordBatch]:
    for batch in reader:
        if batch.num_rows:
            yield _text_columns(batch, for_json=for_json)


def _strings(texts: list[str]) -> pa.Array:
    """A string array built from bytes: converting Python values (``pa.scalar("x")``,
    ``pa.array``) would import pandas, a third of a second a command would pay."""
    data = [text.encode() for text in texts]
    offsets = struct.pack(f"<{len(data) + 1}i", *itertools.accumulate(map(len, data), initial=0))
    return pa.Array.from_buffers(pa.string(), len(data),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


def _literal(text: str) -> pa.Scalar:
    """A string scalar (``_strings``)."""
    return _strings([text])[0]


_QUOTE, _EMPTY, _NULL, _POINT_ZERO = (_literal(text) for text in ('"', "", "null", ".0"))


def _finite(value: object) -> object:
    """A Python value of a column as JSON can hold it: decimals as floats, NaN and infinities
    None, timestamps in the ISO form of a timestamp column (``_iso``), a map's (key, value)
    pairs as lists."""
    if isinstance(value, pa.MonthDayNano):  # a tuple, but a duration to a reader
        return _duration(value)
    if isinstance(value, Decimal):  # a number, as a decimal column is in JSON
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return value.astimezone(dt.UTC).strftime(f"{_ISO}.%fZ")
        return value.strftime(f"{_ISO}.%f")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _python_json(column: pa.Array) -> pa.Array:
    """Each value of a column as JSON text by Python's json, value by value; NULL stays NULL.
    For what Arrow cannot write itself: lists, structs, maps, dates, bytes, ..."""
    # default=str: what JSON has no type for (dates, bytes, intervals) as text
    text = _strings([json.dumps(_finite(v), default=str, allow_nan=False,
                                ensure_ascii=False) for v in column.to_pylist()])
    return pc.if_else(column.is_valid(), text, pa.nulls(len(column), pa.string()))


def _json_values(column: pa.Array) -> pa.Array:
    """Each value of a column as JSON text, computed by Arrow for the usual column types."""
    kind = column.type
    text = None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        # control characters need \u escapes, which Arrow's replacements cannot write
        if not pc.any(pc.match_substring_regex(column, "[\\x00-\\x1f]")).as_py():
            text = pc.replace_substring(column, "\\", "\\\\")
            text = pc.replace_substring(text, '"', '\\"')
            text = pc.binary_join_element_wise(_QUOTE, text, _QUOTE, _EMPTY)
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        text = column.cast(pa.string())
    elif pa.types.is_floating(kind):
        text = column.cast(pa.string())
        # 3.0 is written "3" by Arrow; keep it a float for readers that tell ints apart
        integral = pc.match_substring_regex(text, "^-?[0-9]+$")
        text = pc.if_else(integral, pc.binary_join_element_wise(text, _POINT_ZERO, _EMPTY), text)
    if text is None:  # lists, structs, dates, bytes, ...
        text = _python_json(column)
    return pc.fill_null(text, _NULL)


def _json_rows(batch: pa.RecordBatch) -> list[str]:
    """One JSON object per row of a batch (prepared by ``_text_columns``)."""
    parts: list = []
    for i, (name, column) in enumerate(zip(batch.schema.names, batch.columns, strict=True)):
        parts.append(_literal(("{" if i == 0 else ", ") + json.dumps(name) + ": "))
        parts.append(_json_values(column))
    if not parts:
        return ["{}"] * batch.num_rows
    parts.append(_literal("}"))
    return pc.binary_join_element_wise(*parts, _EMPTY).to_pylist()


def _write_jsonl(reader: pa.RecordBatchReader, out: BinaryIO) -> None:
    for batch in _batches(reader, for_json=True):
        out.write(("\n".join(_json_rows(batch)) + "\n").encode())


def _write_json(reader: pa.RecordBatchReader, out: BinaryIO) -> None:
    separator = "[\n"
    for batch in _batches(reader, for_json=True):
        out.write((separator + ",\n".join(_json_rows(batch))).encode())
        separator = ",\n"
    out.write(b"[]\n" if separator == "[\n" else b"\n]\n")


def _write_csv(reader: pa.RecordBatchReader, out: BinaryIO) -> None:
    import pyarrow.csv as pacsv

    writer = None
    for batch in _batches(reader, for_json=False):
        if writer is None:
            writer = pacsv.CSVWriter(out, batch.schema)
        writer.write_batch(batch)
    if writer is None:  # no rows: the header alone
        schema = pa.schema([pa.field(name, pa.string()) for name in reader.schema.names])
        pacsv.write_csv(schema.empty_table(), out)
    else:
        writer.close()


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.4g}"
    return shown(str(value))


def _write_table(reader: pa.RecordBatchReader, out: BinaryIO) -> None:
    names = reader.schema.names
    # Numbers right-aligned, like every table of numbers; text left-aligned.
    right = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
             or pa.types.is_decimal(f.type) for f in reader.schema]
    widths: list[int] | None = None
    pending: list[list[str]] = []

    def emit(rows: Iterable[list[str]]) -> None:
        lines = []
        for cells in rows:
            padded = [c.rjust(w) if r else c.ljust(w)
                      for c, w, r in zip(cells, widths, right, strict=True)]
            lines.append("  ".join(padded).rstrip() + "\n")
        out.write("".join(lines).encode())

    for batch in _batches(reader, for_json=False):
        columns = [[_cell(v) for v in column.to_pylist()] for column in batch.columns]
        rows = [list(cells) for cells in zip(*columns, strict=True)]
        if widths is not None:
            emit(rows)
            continue
        pending += rows
        if len(pending) >= _TABLE_WIDTH_ROWS:
            widths = [max(len(n), *(len(r[i]) for r in pending)) for i, n in enumerate(names)]
            emit([list(names)])
            emit(pending)
    if widths is None:
        if not pending:
            out.write(b"(no rows)\n")
            return
        widths = [max(len(n), *(len(r[i]) for r in pending)) for i, n in enumerate(names)]
        emit([list(names)])
        emit(pending)


_WRITERS: Final[dict[str, Callable[[pa.RecordBatchReader, BinaryIO], None]]] = {
    "table": _write_table,
    "csv": _write_csv,
    "json": _write_json,
    "jsonl": _write_jsonl,
}


def _write_parquet(reader: pa.RecordBatchReader, out: BinaryIO) -> None:
    import pyarrow.parquet as pq

    with pq.ParquetWriter(out, reader.schema, compression="zstd") as writer:
        for batch in reader:
            writer.write_batch(batch)


def write_result(
    result: pa.RecordBatchReader | pa.Table, fmt: str, out: BinaryIO, output: str | None = None
) -> None:
    """Writes a result in one format, batch by batch.

    Args:
        result: The rows; a table is written as its batches.
        fmt: ``table``, ``csv``, ``json``, ``jsonl`` or ``parquet``.
        out: Where to write when ``output`` is None (a binary stream, e.g. stdout's buffer).
        output: A file to write instead; it appears whole when the result is complete (written
            under a temporary name beside it, then renamed), and not at all otherwise.

    Raises:
        ValueError: Unknown format, ``parquet`` without ``output``, or ``output`` a folder.
    """
    if isinstance(result, pa.Table):
        result = pa.RecordBatchReader.from_batches(result.schema, result.to_batches())
    if fmt == "parquet":
        if output is None:
            raise ValueError("--format parquet writes a file: give --output FILE")
        write = _write_parquet
    elif fmt in _WRITERS:
        write = _WRITERS[fmt]
    else:
        raise ValueError(f"unknown format {fmt!r}; expected parquet or one of {sorted(_WRITERS)}")
    if output is None:
        write(result, out)
        out.flush()
        return
    if os.path.isdir(output):
        raise ValueError(f"--output {output!r} is a folder; give the file to write")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--output {output!r}: folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(output)}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(result, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the result private
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json_object(value: dict, out: BinaryIO) -> None:
    """One JSON object on one line, its values as a ``json`` result writes them (``_finite``:
    timestamps ISO 8601, NaN and infinities null); a path or other value JSON has no type for
    as its text. For the commands whose output is one record (``bfd audit --format json``)."""
    text = json.dumps(_finite(value), default=str, allow_nan=False, ensure_ascii=False)
    out.write((text + "\n").encode())
    out.flush()


class _TextSink:
    """Bytes written to a text stream that has no binary buffer (a notebook's stdout)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.closed = False

    def write(self, data: bytes) -> int:
        self.stream.write(bytes(data).decode())
        return len(data)

    def flush(self) -> None:
        self.stream.flush()


def stdout_bytes() -> BinaryIO:
    """``sys.stdout`` as a binary stream, its text layer flushed first so that text already
    printed comes before the bytes."""
    sys.stdout.flush()
    return getattr(sys.stdout, "buffer", None) or _TextSink(sys.stdout)


def count(n: int, word: str) -> str:
    """``n`` and ``word``, plural but for one: ``1 shard``, ``2 shards``, ``0 images``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def size_text(nbytes: int) -> str:
    """A number of bytes in the unit that reads best, three figures: ``512 B``, ``4.00 KiB``,
    ``37.5 MiB``, ``1.25 GiB``, ``312 GiB``, ``2.10 TiB`` (never ``0.00 GiB``)."""
    value, unit = float(nbytes), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            break
        value, unit = value / 1024, bigger
    if unit == "B":
        return f"{nbytes} B"
    # rounding may reach 1024 (1023.9 -> "1024 KiB"): said in the next unit
    if round(value) >= 1024 and unit != "PiB":
        return _figures(value / 1024, {"KiB": "MiB", "MiB": "GiB", "GiB": "TiB",
                                       "TiB": "PiB"}[unit])
    return _figures(value, unit)


def _figures(value: float, unit: str) -> str:
    """``value`` in ``unit`` with three significant figures (``1.00``, ``37.5``, ``312``)."""
    decimals = 2 if value < 9.995 else 1 if value < 99.95 else 0
    return f"{value:.{decimals}f} {unit}"
