-- layer_summary: one row per layer of every complete run.
--   frac_pos, frac_content: Stage 1 at the attn_in site (the input the heads read);
--   frac_pos_resid: Stage 1 at the resid site, NULL where the run did not record it;
--   e_*: head energies summed over the layer's heads; f_*: those sums divided by their total
--   (energy-weighted); mean_f_*: plain mean of the heads' own fractions;
--   n_heads_pp / _cp / _cc: heads whose stored head_type (docs/method.md "Stage 2") is
--   position-position, content-position or content-content; n_heads_undefined: heads whose
--   energies were zero or not finite (head_type 'undefined', counted in none of the three);
--   frac_pos_adj (and its 95 % interval _lo/_hi), frac_pos_chance: the chance-corrected
--   positional share at attn_in and the raw share's chance level (docs/method.md);
--   e_*_adj, f_*_adj: as e_*, f_* from the heads' chance-corrected energies;
--   depth: the model's number of blocks (runs.depth; for runs that did not record it,
--   1 + the largest layer index stored); rel_depth = layer / (depth - 1).
--   model: as run_shapes spells it (with the run's --model-arg options, where it has any).
--   model_logit_residual, model_attn_residual: the check against the model at attn_in
--   (layers' columns, docs/checks.md): about 1e-6 and 1e-7, above 1e-3 a failure; NULL at a
--   layer whose run stored no check (extracted before it).
WITH complete AS (
    SELECT r.run_id, sh.model, nullif(r.depth, 0) AS model_depth
    FROM runs AS r
    JOIN run_shapes AS sh USING (run_id)
),
head_layers AS (
    SELECT
        run_id,
        layer,
        count(*) AS n_heads,
        sum(e_pp) AS e_pp,
        sum(e_pc) AS e_pc,
        sum(e_cp) AS e_cp,
        sum(e_cc) AS e_cc,
        avg(f_pp) AS mean_f_pp,
        avg(f_pc) AS mean_f_pc,
        avg(f_cp) AS mean_f_cp,
        avg(f_cc) AS mean_f_cc,
        count(*) FILTER (WHERE head_type = 'position-position') AS n_heads_pp,
        count(*) FILTER (WHERE head_type = 'content-position') AS n_heads_cp,
        count(*) FILTER (WHERE head_type = 'content-content') AS n_heads_cc,
        count(*) FILTER (WHERE head_type = 'undefined') AS n_heads_undefined,
        sum(e_pp_adj) AS e_pp_adj,
        sum(e_pc_adj) AS e_pc_adj,
        sum(e_cp_adj) AS e_cp_adj,
        sum(e_cc_adj) AS e_cc_adj
    FROM heads
    GROUP BY run_id, layer
),
site_layers AS (
    SELECT
        run_id,
        layer,
        any_value(frac_pos) FILTER (WHERE site = 'attn_in') AS frac_pos,
        any_value(frac_img + frac_int) FILTER (WHERE site = 'attn_in') AS frac_content,
        any_value(frac_pos) FILTER (WHERE site = 'resid') AS frac_pos_resid,
        any_value(frac_pos_adj) FILTER (WHERE site = 'attn_in') AS frac_pos_adj,
        any_value(frac_pos_adj_lo) FILTER (WHERE site = 'attn_in') AS frac_pos_adj_lo,
        any_value(frac_pos_adj_hi) FILTER (WHERE site = 'attn_in') AS frac_pos_adj_hi,
        any_value(frac_pos_chance) FILTER (WHERE site = 'attn_in') AS frac_pos_chance,
        any_value(model_logit_residual) FILTER (WHERE site = 'attn_in') AS model_logit_residual,
        any_value(model_attn_residual) FILTER (WHERE site = 'attn_in') AS model_attn_residual
    FROM layers
    GROUP BY run_id, layer
),
per_layer AS (
    SELECT *
    FROM head_layers
    FULL OUTER JOIN site_layers USING (run_id, layer)
),
with_depth AS (
    SELECT
        *,
        max(layer) OVER (PARTITION BY run_id) + 1 AS stored_depth
    FROM per_layer
)
SELECT
    c.model,
    d.run_id,
    d.layer,
    coalesce(c.model_depth, d.stored_depth) AS depth,
    CASE WHEN coalesce(c.model_depth, d.stored_depth) > 1
        THEN d.layer / (coalesce(c.model_depth, d.stored_depth) - 1) ELSE 0.0 END AS rel_depth,
    d.frac_pos,
    d.frac_content,
    d.frac_pos_resid,
    coalesce(d.n_heads, 0) AS n_heads,
    d.e_pp,
    d.e_pc,
    d.e_cp,
    d.e_cc,
    d.e_pp / nullif(d.e_pp + d.e_pc + d.e_cp + d.e_cc, 0) AS f_pp,
    d.e_pc / nullif(d.e_pp + d.e_pc + d.e_cp + d.e_cc, 0) AS f_pc,
    d.e_cp / nullif(d.e_pp + d.e_pc + d.e_cp + d.e_cc, 0) AS f_cp,
    d.e_cc / nullif(d.e_pp + d.e_pc + d.e_cp + d.e_cc, 0) AS f_cc,
    d.mean_f_pp,
    d.mean_f_pc,
    d.mean_f_cp,
    d.mean_f_cc,
    coalesce(d.n_heads_pp, 0) AS n_heads_pp,
    coalesce(d.n_heads_cp, 0) AS n_heads_cp,
    coalesce(d.n_heads_cc, 0) AS n_heads_cc,
    coalesce(d.n_heads_undefined, 0) AS n_heads_undefined,
    d.frac_pos_adj,
    d.frac_pos_adj_lo,
    d.frac_pos_adj_hi,
    d.frac_pos_chance,
    d.e_pp_adj,
    d.e_pc_adj,
    d.e_cp_adj,
    d.e_cc_adj,
    d.e_pp_adj / nullif(d.e_pp_adj + d.e_pc_adj + d.e_cp_adj + d.e_cc_adj, 0) AS f_pp_adj,
    d.e_pc_adj / nullif(d.e_pp_adj + d.e_pc_adj + d.e_cp_adj + d.e_cc_adj, 0) AS f_pc_adj,
    d.e_cp_adj / nullif(d.e_pp_adj + d.e_pc_adj + d.e_cp_adj + d.e_cc_adj, 0) AS f_cp_adj,
    d.e_cc_adj / nullif(d.e_pp_adj + d.e_pc_adj + d.e_cp_adj + d.e_cc_adj, 0) AS f_cc_adj,
    d.model_logit_residual,
    d.model_attn_residual
FROM with_depth AS d
JOIN complete AS c USING (run_id)
