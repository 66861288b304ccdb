-- latest_runs: the newest complete run of each model, all columns of `runs`, model spelt as
-- run_shapes spells it (the timm name, then the run's --model-arg options where it has any:
-- two runs of one timm name built with other arguments are two models).
-- "Newest" is the largest created_at; run_id breaks ties so the choice is stable.
SELECT r.* REPLACE (sh.model AS model)
FROM runs AS r
JOIN run_shapes AS sh USING (run_id)
QUALIFY row_number() OVER (PARTITION BY sh.model ORDER BY r.created_at DESC, r.run_id DESC) = 1
