"""Checkpoints left out by ``audit-checkpoints``: the append-only ``left_out`` table
(docs/layout.md).

A checkpoint file that ``audit-checkpoints`` leaves out (no readable checkpoint, or weights that
do not load or do not fit the model) gets no run and no audit; without a record the series'
points either side of it would be joined as if nothing had been tried between them. Each
invocation of the flow that leaves out a file not left out already (or for another reason), or
finds a file left out before readable now (audited, or audited already) or gone, appends one
file of such changes for its series::

    tables/left_out/<series folder>/<record_id>.parquet   one row per file whose state changed

written with ``atomic_write`` (whole or not at all), never rewritten, under the series' lock
(``series_lock``), as the audits of the series are. A file's state is its latest row (by
``recorded_at``, then ``record_id``): ``status`` ``left out`` (with its ``reason``) or
``cleared`` (``reason`` says why: audited, readable now, gone). The SQL view
``checkpoints_left_out`` holds the files whose latest row is ``left out``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from .audits import _event_files, new_audit_id, series_folder
from .paths import Store, atomic_write
from .tables import keep_columns_file

TABLE: Final[str] = "left_out"
LEFT_OUT: Final[str] = "left out"
CLEARED: Final[str] = "cleared"

LEFT_OUT_SCHEMA: Final[pa.Schema] = pa.schema([
    ("record_id", pa.string()),      # one per invocation's file (sorts by time)
    ("series", pa.string()),
    ("checkpoint", pa.string()),     # the file as the folder or glob listed it
    ("weights", pa.string()),        # the file in its one spelling (bfd.files.input_path)
    ("file", pa.string()),           # its name
    ("step", pa.int64()),            # the step of its name; NULL when its name holds none
    ("status", pa.string()),         # "left out" or "cleared"
    ("reason", pa.string()),         # the left-out line, or why it was cleared
    ("recorded_at", pa.timestamp("us", tz="UTC")),
    ("checkpoints", pa.string()),    # the folder or glob audit-checkpoints was given
    ("flow_run_id", pa.string()),    # the Prefect flow run of that invocation
])


def write_left_out(store: Store, series: str, rows: Sequence[Mapping[str, Any]],
                   now: datetime | None = None) -> Path | None:
    """Appends one file of ``rows`` (``LEFT_OUT_SCHEMA`` columns but ``record_id``,
    ``series`` and ``recorded_at``, which this sets) to the series' ``left_out`` records;
    nothing when ``rows`` is empty. Hold the series' lock (``series_lock``)."""
    if not rows:
        return None
    now = now or datetime.now(UTC)
    record_id = new_audit_id(now)
    data = pa.Table.from_pylist(
        [{**{f.name: r.get(f.name) for f in LEFT_OUT_SCHEMA}, "record_id": record_id,
          "series": series, "recorded_at": now} for r in rows], schema=LEFT_OUT_SCHEMA)
    path = store.table_dir(TABLE) / series_folder(series) / f"{record_id}.parquet"
    atomic_write(path, lambda f: pq.write_table(data, f, compression="zstd"))
    keep_columns_file(store.table_dir(TABLE), LEFT_OUT_SCHEMA)
    return path


def read_left_out(store: Store, series: str | None = None) -> list[dict[str, Any]]:
    """Every ``left_out`` row of one series (all when None), oldest first. A file that does
    not read is skipped (the SQL catalog names it; a record is no audit: the series goes on)."""
    rows: list[dict[str, Any]] = []
    for p in _event_files(store, TABLE, series):  # the audit events' files, of this table
        try:
            rows += pq.read_table(p, schema=LEFT_OUT_SCHEMA, partitioning=None).to_pylist()
        except (pa.ArrowException, OSError):
            continue
    return sorted(rows, key=lambda r: (r["recorded_at"], r["record_id"]))


def current_left_out(store: Store, series: str) -> dict[str, dict[str, Any]]:
    """The files of ``series`` left out now (their latest row is ``left out``), by
    ``weights``."""
    latest: dict[str, dict[str, Any]] = {}
    for row in read_left_out(store, series):
        latest[row["weights"]] = row
    return {w: r for w, r in latest.items() if r["status"] == LEFT_OUT}
