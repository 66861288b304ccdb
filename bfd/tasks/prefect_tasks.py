"""The Prefect task objects: thin wrappers around the plain functions of this room.

The functions themselves import no Prefect, so a GPU worker, a notebook or a benchmark can
call them without a Prefect installation; the flows use these wrappers.
"""

from prefect import task
from prefect.cache_policies import NO_CACHE

from bfd.tasks.decompose import decompose_site_layer
from bfd.tasks.extract import extract_shard, prepare_run
from bfd.tasks.publish import publish
from bfd.tasks.stats_only import decompose_from_forward

# Inputs are paths and configs; nothing here is worth caching across runs (the store is the
# cache: completed shards are skipped by the flow itself).
prepare_run_task = task(prepare_run, name="prepare-run", cache_policy=NO_CACHE)
extract_shard_task = task(
    extract_shard, name="extract-shard", cache_policy=NO_CACHE, retries=2,
    retry_delay_seconds=1, task_run_name="extract shard {shard.index}",
)
decompose_site_layer_task = task(
    decompose_site_layer, name="decompose-site-layer", cache_policy=NO_CACHE, retries=1,
    task_run_name="decompose {site} layer {layer}",
)
publish_task = task(publish, name="publish", cache_policy=NO_CACHE)
decompose_from_forward_task = task(decompose_from_forward, name="decompose-from-forward",
                                   cache_policy=NO_CACHE)
