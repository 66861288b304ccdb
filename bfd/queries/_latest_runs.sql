-- latest_runs: the newest complete run of each model, all columns of `runs`.
-- "Newest" is the largest created_at; run_id breaks ties so the choice is stable.
SELECT *
FROM runs
WHERE status = 'complete'
QUALIFY row_number() OVER (PARTITION BY model ORDER BY created_at DESC, run_id DESC) = 1
