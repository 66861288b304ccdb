-- layer_profile: one row per layer of one complete run of a model: how much of the heads'
-- input is positional (frac_pos at attn_in, frac_pos_resid at resid) and how the heads use it
-- (energy-weighted f_pp, f_pc, f_cp, f_cc of the layer), against layer and relative depth.
-- frac_pos_adj [frac_pos_adj_lo, frac_pos_adj_hi]: the chance-corrected positional share and
-- its 95 % interval, frac_pos_chance: the raw share's chance level (docs/method.md).
-- Give model (its latest complete run), run_id (that run, of any model) or both (a run_id of
-- another model gives no rows); a run that is not complete gives no rows.
-- params: model (required unless run_id), run_id (optional)
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
    s.n_heads_undefined,
    s.frac_pos_chance,
    s.frac_pos_adj,
    s.frac_pos_adj_lo,
    s.frac_pos_adj_hi,
    s.f_pp_adj,
    s.f_pc_adj,
    s.f_cp_adj,
    s.f_cc_adj
FROM layer_summary AS s
JOIN chosen USING (run_id)
WHERE CAST($model AS VARCHAR) IS NULL OR s.model = $model
ORDER BY s.layer
