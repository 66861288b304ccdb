"""The store: Zarr activations and results, run manifests, Parquet tables (docs/layout.md).

The public API is this list; the modules behind it may move. Names load on first use, so that
a command that only needs ``Store`` (``bfd sql``, ``bfd runs``) does not import xarray, Zarr and
Dask.
"""

from __future__ import annotations

from typing import Final

from bfd.lazy import lazy_exports

# name -> the module of this package that defines it
_EXPORTS: Final[dict[str, str]] = {
    "COMPRESSIONS": "activations",
    "DIMS": "activations",
    "create_activation_template": "activations",
    "images_per_chunk_for": "activations",
    "list_runs": "activations",
    "open_activations": "activations",
    "write_shard": "activations",
    "AUDIT_SCHEMA": "audits",
    "SEEN_FIGURES": "audits",
    "DRIFT_SCHEMA": "audits",
    "new_audit_id": "audits",
    "previous_audit": "audits",
    "read_audits": "audits",
    "read_drift": "audits",
    "write_audit": "audits",
    "write_drift": "audits",
    "Fault": "integrity",
    "check_intact": "integrity",
    "kept_no_activations": "integrity",
    "repair_command": "integrity",
    "table_faults": "integrity",
    "weights_gone": "integrity",
    "trusted_shards": "integrity",
    "verify_run": "integrity",
    "IMAGE_STATUSES": "manifest",
    "ImageRecord": "manifest",
    "Shard": "manifest",
    "completed_shards": "manifest",
    "image_list_sha256": "manifest",
    "mark_shard_done": "manifest",
    "plan_shards": "manifest",
    "read_image_manifest": "manifest",
    "shard_ranges": "manifest",
    "write_image_manifest": "manifest",
    "DamagedStoreError": "paths",
    "NotAStoreError": "paths",
    "RunBusyError": "paths",
    "Store": "paths",
    "check_store": "paths",
    "default_store": "paths",
    "require_writable": "paths",
    "run_lock": "paths",
    "validate_run_id": "paths",
    "open_results": "published",
    "published_files": "published",
    "publishing": "published",
    "read_pointer": "published",
    "read_run_table": "published",
    "read_table": "published",
    "results_path": "published",
    "write_results": "published",
    "write_table": "published",
    "has_request_keys": "request_keys",
    "read_request_key": "request_keys",
    "recorded_inputs": "request_keys",
    "write_request_key": "request_keys",
    "heads_rows": "result_tables",
    "layers_rows": "result_tables",
    "modes_rows": "result_tables",
    "DTYPES": "runs",
    "NOT_STORED": "runs",
    "RunRequest": "runs",
    "canonical_json": "runs",
    "is_stats_only": "runs",
    "earlier_spelling": "runs",
    "list_requests": "runs",
    "read_request": "runs",
    "run_id": "runs",
    "sha256_hex": "runs",
    "write_request": "runs",
    "RUN_TABLES": "tables",
    "TABLE_SCHEMAS": "tables",
    "conform": "tables",
    "partition_value": "tables",
    "table_glob": "tables",
    "table_path": "tables",
    "unescape_partition_value": "tables",
    "UnpublishedRun": "unpublished",
    "unpublished_run": "unpublished",
    "unpublished_runs": "unpublished",
    "read_logit_check": "weights",
    "read_model_tensors": "weights",
    "write_logit_check": "weights",
    "write_model_tensors": "weights",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
