-- layer_profile: one row per layer of one complete run of a model: how much of the heads'
-- input is positional (frac_pos at attn_in, frac_pos_resid at resid) and how the heads use it
-- (energy-weighted f_pp, f_pc, f_cp, f_cc of the layer), against layer and relative depth.
-- run_id defaults to the model's latest complete run; a run that is not complete gives no rows.
-- params: model (required), run_id (optional)
WITH chosen AS (
    SELECT coalesce(
        CAST($run_id AS VARCHAR),
        (SELECT run_id FROM latest_runs WHERE model = $model)
    ) AS run_id
)
SELECT
    s.model,
    s.run_id,
    s.layer,
    s.rel_depth,
    s.frac_pos,
    s.frac_content,
    s.frac_pos_resid,
    s.f_pp,
    s.f_pc,
    s.f_cp,
    s.f_cc,
    s.n_heads,
    s.n_heads_pp,
    s.n_heads_cp,
    s.n_heads_cc,
    s.n_heads_undefined
FROM layer_summary AS s
JOIN chosen USING (run_id)
WHERE s.model = $model
ORDER BY s.layer
