"""Publishing a decomposition: the results Dataset into the run's Zarr group, and the tidy
Parquet tables that SQL and dashboards read (docs/layout.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa

import bfd
from bfd.core.method import RESULTS_METHOD
from bfd.storage import (
    ImageRecord,
    Store,
    first_published,
    heads_rows,
    layers_rows,
    modes_rows,
    open_activations,
    publishing,
    read_image_manifest,
    read_request,
    request_columns,
)
from bfd.tasks.decompose import require_extracted


def runs_row(store: Store, run_id: str, status: str, config: dict,
             images: list[ImageRecord] | None = None) -> dict:
    """The ``runs`` row of a run from its request and the attrs its extraction stored;
    ``images``: the image statuses when not the manifest's (a stats-only run marks no shard)."""
    request = read_request(store, run_id)
    attrs = open_activations(store, run_id).attrs
    info = json.loads(attrs.get("model_info", "{}"))
    images = images if images is not None else read_image_manifest(store, run_id)
    return {
        "run_id": run_id,
        **request_columns(request),
        "n_skipped": sum(r.status == "skipped" for r in images),
        "grid_h": info.get("grid", [0, 0])[0],
        "grid_w": info.get("grid", [0, 0])[1],
        "prefix_tokens": info.get("num_prefix_tokens", 0),
        "created_at": first_published(store, run_id) or datetime.now(UTC),
        "bfd_version": bfd.__version__,
        "timm_version": attrs.get("timm_version", ""),
        "torch_version": attrs.get("torch_version", ""),
        "config_json": json.dumps({"request": request.to_json_dict(), **config},
                                  sort_keys=True, default=str),
        "status": status,
        "depth": info.get("depth", 0),
        "num_heads": info.get("num_heads", 0),
        "width": info.get("width", 0),
        # the method that computed the results (bfd.core.method), as the pointer records it
        "method": RESULTS_METHOD,
    }


def publish(store_root: str, run_id: str, results, config: dict,
            images: list[ImageRecord] | None = None) -> dict[str, str]:
    """Publish a run: its results Dataset and every table, written as a new version and
    switched at once (``bfd.storage.publishing``), so a reader sees the previous version or
    this one, never a mix, and a failed publish leaves the previous version published. The
    publish records the method that computed ``results`` (``RESULTS_METHOD``: its pointer's
    ``method`` and the ``runs`` row's).
    ``images``: the image statuses when not the manifest's (see ``runs_row``).

    Returns:
        Paths of what was written, by name.
    """
    store = Store(store_root)
    records = images if images is not None else read_image_manifest(store, run_id)
    require_extracted(store, run_id, records)
    model = read_request(store, run_id).model
    images_table = pa.Table.from_pylist([
        {"image_index": r.index, "image_id": r.id, "sha256": r.sha256, "status": r.status,
         "error": r.error}
        for r in records
    ])
    tables = {"layers": layers_rows(results), "images": images_table}
    if "head" in results.dims:
        tables |= {"heads": heads_rows(results), "modes": modes_rows(results)}
    tables["runs"] = [runs_row(store, run_id, "complete", config, records)]
    with publishing(store, run_id) as pub:
        pub.created_at = tables["runs"][0]["created_at"].isoformat()
        pub.method = RESULTS_METHOD
        written = {"results": f"{store.zarr_path}/{pub.write_results(results)}"}
        for name, rows in tables.items():
            written[name] = str(pub.write_table(name, model, rows))
    return written
