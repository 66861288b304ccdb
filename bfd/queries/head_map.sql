-- head_map: one row per head of one complete run of a model, with its fractions and stored
-- head_type, for layer x head maps: of model's latest complete run, or of run_id (both: a
-- run_id of another model gives no rows).
-- params: model (required unless run_id), run_id (optional)
WITH chosen AS (
    SELECT coalesce(
        CAST($run_id AS VARCHAR),
        (SELECT run_id FROM latest_runs WHERE model = $model)
    ) AS run_id
)
SELECT
    r.model,
    h.run_id,
    h.layer,
    h.head,
    h.f_pp,
    h.f_pc,
    h.f_cp,
    h.f_cc,
    h.head_type,
    h.eff_rank,
    h.mode_coupling
FROM heads AS h
JOIN chosen USING (run_id)
JOIN run_shapes AS r USING (run_id)
WHERE CAST($model AS VARCHAR) IS NULL OR r.model = $model
ORDER BY h.layer, h.head
