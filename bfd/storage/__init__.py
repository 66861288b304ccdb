"""The store: Zarr activations and results, run manifests, Parquet tables (docs/layout.md).

The public API is this list; the modules behind it may move.
"""

from .activations import COMPRESSIONS as COMPRESSIONS
from .activations import DIMS as DIMS
from .activations import create_activation_template as create_activation_template
from .activations import images_per_chunk_for as images_per_chunk_for
from .activations import list_runs as list_runs
from .activations import open_activations as open_activations
from .activations import write_shard as write_shard
from .integrity import Fault as Fault
from .integrity import check_intact as check_intact
from .integrity import repair_command as repair_command
from .integrity import trusted_shards as trusted_shards
from .integrity import verify_run as verify_run
from .manifest import IMAGE_STATUSES as IMAGE_STATUSES
from .manifest import ImageRecord as ImageRecord
from .manifest import Shard as Shard
from .manifest import completed_shards as completed_shards
from .manifest import image_list_sha256 as image_list_sha256
from .manifest import mark_shard_done as mark_shard_done
from .manifest import plan_shards as plan_shards
from .manifest import read_image_manifest as read_image_manifest
from .manifest import write_image_manifest as write_image_manifest
from .paths import DamagedStoreError as DamagedStoreError
from .paths import RunBusyError as RunBusyError
from .paths import Store as Store
from .paths import default_store as default_store
from .paths import require_writable as require_writable
from .paths import run_lock as run_lock
from .paths import validate_run_id as validate_run_id
from .result_tables import heads_rows as heads_rows
from .result_tables import layers_rows as layers_rows
from .result_tables import modes_rows as modes_rows
from .results import open_results as open_results
from .results import write_results as write_results
from .runs import DTYPES as DTYPES
from .runs import RunRequest as RunRequest
from .runs import canonical_json as canonical_json
from .runs import list_requests as list_requests
from .runs import read_request as read_request
from .runs import run_id as run_id
from .runs import sha256_hex as sha256_hex
from .runs import write_request as write_request
from .tables import TABLE_SCHEMAS as TABLE_SCHEMAS
from .tables import conform as conform
from .tables import partition_value as partition_value
from .tables import read_table as read_table
from .tables import table_glob as table_glob
from .tables import table_path as table_path
from .tables import unescape_partition_value as unescape_partition_value
from .tables import write_table as write_table
from .weights import read_model_tensors as read_model_tensors
from .weights import write_model_tensors as write_model_tensors
