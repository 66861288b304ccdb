-- The checkpoint files of each series that audit-checkpoints left out and that no later
-- invocation cleared (audited, readable, gone): the latest left_out row of each file, where
-- it is 'left out' (bfd.storage.left_out). One row per (series, weights).
SELECT series, checkpoint, weights, file, step, reason, recorded_at, checkpoints, flow_run_id,
    record_id
FROM left_out
QUALIFY row_number() OVER (PARTITION BY series, weights
                           ORDER BY recorded_at DESC, record_id DESC) = 1
    AND status = 'left out'
ORDER BY series, step NULLS LAST, file
