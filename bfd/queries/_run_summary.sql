-- run_summary: one row per complete run: the model-level figures of docs/method.md, "Layer and
-- model summaries". f_*: energies summed over all layers and heads, then divided (energy-
-- weighted); mean_f_*: plain mean of the head fractions; frac_pos_mean: mean over layers of
-- frac_pos at attn_in; n_heads_*: head counts per stored head_type, as in layer_summary;
-- frac_pos_adj_mean, f_*_adj: the same from the chance-corrected shares (docs/method.md);
-- n_images: the images requested (runs.n_images); n_decoded: the images decoded and
-- decomposed (n_images less runs.n_skipped, which failed to decode), the N of the shares;
-- model: as run_shapes spells it (with the run's --model-arg options, where it has any);
-- model_logit_residual_max, model_attn_residual_max: the largest check against the model over
-- the run's layers (docs/checks.md: about 1e-6 and 1e-7; above 1e-3 the check failed and the
-- shares may be wrong), NULL for a run extracted before the check.
WITH per_run AS (
    SELECT
        run_id,
        count(*) AS n_layers,
        CAST(sum(n_heads) AS BIGINT) AS n_heads,
        sum(e_pp) AS e_pp,
        sum(e_pc) AS e_pc,
        sum(e_cp) AS e_cp,
        sum(e_cc) AS e_cc,
        -- Layer means weighted by their defined heads are the plain mean over all heads
        -- (an undefined head has NULL fractions, left out of its layer's mean).
        sum(mean_f_pp * (n_heads - n_heads_undefined))
            / nullif(sum(n_heads - n_heads_undefined), 0) AS mean_f_pp,
        sum(mean_f_pc * (n_heads - n_heads_undefined))
            / nullif(sum(n_heads - n_heads_undefined), 0) AS mean_f_pc,
        sum(mean_f_cp * (n_heads - n_heads_undefined))
            / nullif(sum(n_heads - n_heads_undefined), 0) AS mean_f_cp,
        sum(mean_f_cc * (n_heads - n_heads_undefined))
            / nullif(sum(n_heads - n_heads_undefined), 0) AS mean_f_cc,
        avg(frac_pos) AS frac_pos_mean,
        avg(frac_pos_resid) AS frac_pos_resid_mean,
        CAST(sum(n_heads_pp) AS BIGINT) AS n_heads_pp,
        CAST(sum(n_heads_cp) AS BIGINT) AS n_heads_cp,
        CAST(sum(n_heads_cc) AS BIGINT) AS n_heads_cc,
        CAST(sum(n_heads_undefined) AS BIGINT) AS n_heads_undefined,
        avg(frac_pos_adj) AS frac_pos_adj_mean,
        sum(e_pp_adj) AS e_pp_adj,
        sum(e_pc_adj) AS e_pc_adj,
        sum(e_cp_adj) AS e_cp_adj,
        sum(e_cc_adj) AS e_cc_adj,
        max(model_logit_residual) AS model_logit_residual_max,
        max(model_attn_residual) AS model_attn_residual_max
    FROM layer_summary
    GROUP BY run_id
)
SELECT
    sh.model,
    r.run_id,
    r.weights,
    r.created_at,
    r.n_images,
    r.n_images - coalesce(r.n_skipped, 0) AS n_decoded,
    coalesce(p.n_layers, 0) AS n_layers,
    coalesce(p.n_heads, 0) AS n_heads,
    p.e_pp / nullif(p.e_pp + p.e_pc + p.e_cp + p.e_cc, 0) AS f_pp,
    p.e_pc / nullif(p.e_pp + p.e_pc + p.e_cp + p.e_cc, 0) AS f_pc,
    p.e_cp / nullif(p.e_pp + p.e_pc + p.e_cp + p.e_cc, 0) AS f_cp,
    p.e_cc / nullif(p.e_pp + p.e_pc + p.e_cp + p.e_cc, 0) AS f_cc,
    p.mean_f_pp,
    p.mean_f_pc,
    p.mean_f_cp,
    p.mean_f_cc,
    p.frac_pos_mean,
    p.frac_pos_resid_mean,
    coalesce(p.n_heads_pp, 0) AS n_heads_pp,
    coalesce(p.n_heads_cp, 0) AS n_heads_cp,
    coalesce(p.n_heads_cc, 0) AS n_heads_cc,
    coalesce(p.n_heads_undefined, 0) AS n_heads_undefined,
    p.frac_pos_adj_mean,
    p.e_pp_adj / nullif(p.e_pp_adj + p.e_pc_adj + p.e_cp_adj + p.e_cc_adj, 0) AS f_pp_adj,
    p.e_pc_adj / nullif(p.e_pp_adj + p.e_pc_adj + p.e_cp_adj + p.e_cc_adj, 0) AS f_pc_adj,
    p.e_cp_adj / nullif(p.e_pp_adj + p.e_pc_adj + p.e_cp_adj + p.e_cc_adj, 0) AS f_cp_adj,
    p.e_cc_adj / nullif(p.e_pp_adj + p.e_pc_adj + p.e_cp_adj + p.e_cc_adj, 0) AS f_cc_adj,
    p.model_logit_residual_max,
    p.model_attn_residual_max
FROM runs AS r
JOIN run_shapes AS sh USING (run_id)
LEFT JOIN per_run AS p USING (run_id)
