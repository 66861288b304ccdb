-- compare_models: two models side by side along relative depth (their depths may differ),
-- each from its latest complete run, whatever its weights, prefix option, images and img_size
-- (weights_a/_b, prefix_a/_b, images_a/_b and img_size_a/_b say which, as model_summary:
-- figures decomposed with another prefix option, of other images or at another img_size
-- differ with the models unchanged). note: NULL when the two runs' inputs agree, else why
-- the deltas are not the models' alone (run_pairs' inputs_note of run_id_a and run_id_b:
-- other prefix options, images or img_size; run_a is model_a's run); compare_runs compares
-- two chosen runs.
-- Relative depth layer / (depth - 1) is cut into `bins` equal bins (bin = floor(layer * bins /
-- (depth - 1)), the last layer joining the last bin).
-- Per bin and model: n_layers, frac_pos (plain mean over the bin's layers, attn_in) and
-- f_* (energies summed over the bin's heads, then divided). delta_* = b - a.
-- Bins where neither model has a layer are left out. The *_adj columns (each model's,
-- *_adj_a/_b, and delta_*_adj) are the same figures from the chance-corrected shares
-- (docs/method.md): compare those when n_images_a and n_images_b differ, since the raw
-- shares move with the number of images. n_images_a/_b:
-- the images each run decomposed (decoded ones: requested less skipped).
-- params: model_a (required), model_b (required), bins (default 10)
WITH settings AS (
    SELECT
        -- digits only: a cast alone would take 2.5 as 3 bins
        CASE
            WHEN regexp_full_match(CAST($bins AS VARCHAR), '[0-9]+')
                AND TRY_CAST($bins AS INTEGER) >= 1 THEN TRY_CAST($bins AS INTEGER)
            ELSE error('compare_models: bins must be a positive integer; given ' || $bins)
        END AS bins
),
sides AS (
    SELECT 'a' AS side, run_id FROM latest_runs WHERE model = $model_a
    UNION ALL
    SELECT 'b' AS side, run_id FROM latest_runs WHERE model = $model_b
),
binned AS (
    SELECT
        sides.side,
        s.*,
        -- Integer arithmetic, so that a layer on a bin edge never lands below it by rounding.
        CASE
            WHEN s.depth > 1
                THEN least((s.layer * settings.bins) // (s.depth - 1), settings.bins - 1)
            ELSE 0
        END AS bin
    FROM layer_summary AS s
    JOIN sides USING (run_id)
    CROSS JOIN settings
),
per_bin AS (
    SELECT
        side,
        bin,
        any_value(run_id) AS run_id,
        count(*) AS n_layers,
        avg(frac_pos) AS frac_pos,
        sum(e_pp) / nullif(sum(e_pp + e_pc + e_cp + e_cc), 0) AS f_pp,
        sum(e_pc) / nullif(sum(e_pp + e_pc + e_cp + e_cc), 0) AS f_pc,
        sum(e_cp) / nullif(sum(e_pp + e_pc + e_cp + e_cc), 0) AS f_cp,
        sum(e_cc) / nullif(sum(e_pp + e_pc + e_cp + e_cc), 0) AS f_cc,
        avg(frac_pos_adj) AS frac_pos_adj,
        sum(e_pp_adj) / nullif(sum(e_pp_adj + e_pc_adj + e_cp_adj + e_cc_adj), 0) AS f_pp_adj,
        sum(e_pc_adj) / nullif(sum(e_pp_adj + e_pc_adj + e_cp_adj + e_cc_adj), 0) AS f_pc_adj,
        sum(e_cp_adj) / nullif(sum(e_pp_adj + e_pc_adj + e_cp_adj + e_cc_adj), 0) AS f_cp_adj,
        sum(e_cc_adj) / nullif(sum(e_pp_adj + e_pc_adj + e_cp_adj + e_cc_adj), 0) AS f_cc_adj
    FROM binned
    GROUP BY side, bin
),
a AS (SELECT * FROM per_bin WHERE side = 'a'),
b AS (SELECT * FROM per_bin WHERE side = 'b')
SELECT
    CAST($model_a AS VARCHAR) AS model_a,
    CAST($model_b AS VARCHAR) AS model_b,
    bin,
    bin / settings.bins AS depth_lo,
    (bin + 1) / settings.bins AS depth_hi,
    a.run_id AS run_id_a,
    b.run_id AS run_id_b,
    (SELECT r.weights FROM sides JOIN runs AS r USING (run_id) WHERE side = 'a') AS weights_a,
    (SELECT r.weights FROM sides JOIN runs AS r USING (run_id) WHERE side = 'b') AS weights_b,
    (SELECT r.prefix FROM sides JOIN run_shapes AS r USING (run_id) WHERE side = 'a') AS prefix_a,
    (SELECT r.prefix FROM sides JOIN run_shapes AS r USING (run_id) WHERE side = 'b') AS prefix_b,
    (SELECT r.images FROM sides JOIN run_shapes AS r USING (run_id) WHERE side = 'a') AS images_a,
    (SELECT r.images FROM sides JOIN run_shapes AS r USING (run_id) WHERE side = 'b') AS images_b,
    (SELECT r.img_size FROM sides JOIN run_shapes AS r USING (run_id) WHERE side = 'a')
        AS img_size_a,
    (SELECT r.img_size FROM sides JOIN run_shapes AS r USING (run_id) WHERE side = 'b')
        AS img_size_b,
    (SELECT p.inputs_note FROM run_pairs AS p
        WHERE p.run_a = (SELECT run_id FROM sides WHERE side = 'a')
            AND p.run_b = (SELECT run_id FROM sides WHERE side = 'b')) AS note,
    coalesce(a.n_layers, 0) AS n_layers_a,
    coalesce(b.n_layers, 0) AS n_layers_b,
    a.frac_pos AS frac_pos_a,
    b.frac_pos AS frac_pos_b,
    b.frac_pos - a.frac_pos AS delta_frac_pos,
    a.f_pp AS f_pp_a,
    b.f_pp AS f_pp_b,
    b.f_pp - a.f_pp AS delta_f_pp,
    a.f_pc AS f_pc_a,
    b.f_pc AS f_pc_b,
    b.f_pc - a.f_pc AS delta_f_pc,
    a.f_cp AS f_cp_a,
    b.f_cp AS f_cp_b,
    b.f_cp - a.f_cp AS delta_f_cp,
    a.f_cc AS f_cc_a,
    b.f_cc AS f_cc_b,
    b.f_cc - a.f_cc AS delta_f_cc,
    (SELECT n_images - coalesce(n_skipped, 0) FROM runs WHERE run_id = a.run_id) AS n_images_a,
    (SELECT n_images - coalesce(n_skipped, 0) FROM runs WHERE run_id = b.run_id) AS n_images_b,
    a.frac_pos_adj AS frac_pos_adj_a,
    b.frac_pos_adj AS frac_pos_adj_b,
    b.frac_pos_adj - a.frac_pos_adj AS delta_frac_pos_adj,
    a.f_pp_adj AS f_pp_adj_a,
    b.f_pp_adj AS f_pp_adj_b,
    b.f_pp_adj - a.f_pp_adj AS delta_f_pp_adj,
    a.f_pc_adj AS f_pc_adj_a,
    b.f_pc_adj AS f_pc_adj_b,
    b.f_pc_adj - a.f_pc_adj AS delta_f_pc_adj,
    a.f_cp_adj AS f_cp_adj_a,
    b.f_cp_adj AS f_cp_adj_b,
    b.f_cp_adj - a.f_cp_adj AS delta_f_cp_adj,
    a.f_cc_adj AS f_cc_adj_a,
    b.f_cc_adj AS f_cc_adj_b,
    b.f_cc_adj - a.f_cc_adj AS delta_f_cc_adj
FROM a
FULL OUTER JOIN b USING (bin)
CROSS JOIN settings
ORDER BY bin
