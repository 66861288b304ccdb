"""What an audit sees of its run: the published results version and the run's model-level
figures (the ``run_summary`` view's), computed by the catalog's own SQL over that run's files
alone (only they are listed: a store holds hundreds of runs), so that the audit can keep them
(``bfd.storage.audits.SEEN_FIGURES``)."""

from __future__ import annotations

import os
from typing import Any

import duckdb

from bfd.storage import SEEN_FIGURES, Store, read_pointer

from .catalog import _schema
from .listing import ListingChanged, list_files
from .snapshot import load

_TRIES = 20


def run_seen(store_root: str | os.PathLike[str], run_id: str) -> dict[str, Any]:
    """The run's published version (``results_version``; None for a store written before
    versioned publishing), its ``config_json`` and its ``run_summary`` figures.

    Raises:
        LookupError: The run is not a complete, published run of the store.
        RuntimeError: The run kept being published again while it was read.
    """
    root = os.fspath(store_root)
    names = ", ".join(name for name, _ in SEEN_FIGURES)
    for _ in range(_TRIES):
        pointer = read_pointer(Store(root), run_id)
        try:
            mine, _notes = list_files(root, ("runs", "layers", "heads"), run_ids=(run_id,))
        except ListingChanged:
            continue
        if read_pointer(Store(root), run_id) != pointer:
            continue  # published again while listed: the files may mix two versions
        con = duckdb.connect()
        # one thread: the view's float sums over heads and layers then add the same rows in
        # the same order on every call, so two audits of one run keep the same bits (with
        # DuckDB's threads they came 1 ulp apart now and then: a delta of 9e-19 in
        # audit_history between them); one run's rows are few
        con.execute("SET threads = 1")
        try:
            load(con, _schema(), mine)
            found = con.execute(
                f"SELECT r.config_json, {names} FROM run_summary AS s"
                " JOIN runs AS r USING (run_id) WHERE run_id = $run", {"run": run_id}).fetchall()
        finally:
            con.close()
        if not found:
            raise LookupError(f"run {run_id} is not a complete, published run of store {root}")
        config_json, *figures = found[0]
        return {"results_version": pointer["version"] if pointer else None,
                "config_json": config_json,
                **{name: value for (name, _), value in zip(SEEN_FIGURES, figures, strict=True)}}
    raise RuntimeError(f"run {run_id} of store {root} kept being published again; try again")
