-- compare_runs: every layer share (per site and layer: frac_pos, frac_img, frac_int,
-- frac_content) and every head energy share (per layer and head: f_pp, f_pc, f_cp, f_cc) of
-- run_b against run_a, one row per figure: value_a, value_b, delta = b - a, its standard error
-- sqrt(se_a² + se_b²) and 95 % interval delta ± sqrt(hw_a² + hw_b²) (hw: each run's own
-- interval half-width), and significant = the interval excludes 0 (NULL without intervals).
-- basis: 'adjusted' when both runs hold chance-corrected shares (the _adj columns, whose
-- expectation does not depend on N nor on the split into image and interaction energy;
-- docs/method.md): a raw share's expectation holds a chance level, frac_pos_chance ≈
-- frac_int/(N-1), which moves with N and with frac_int, so raw deltas flag chance-level
-- changes even at equal N. 'raw' when either run holds none (decomposed before they were
-- stored); then, when the runs decomposed other numbers of images, the deltas hold the
-- chance level's change with N and have no interval (delta_se, delta_lo, delta_hi and
-- significant NULL).
-- n_images_a, n_images_b: the images each run decomposed (decoded ones: runs.n_images
-- requested less runs.n_skipped that failed to decode), the N its shares depend on. The
-- intervals cover image sampling only, and treat the two runs' images as independent samples
-- (runs on the same images are positively correlated, so their intervals are conservative).
-- same_model, note: the pair's in run_pairs (one model whatever its weights; else, or when
-- decomposed with other prefix options, over other images or at another img_size, note says
-- why the deltas are no change of one model over the same images and positions), and, when
-- the two runs were decomposed by other methods (run_pairs' method_note, runs.method), that
-- too: a head share's interval is of another estimator in each (method 1's jackknife gave
-- head shares' standard errors off by up to 28 %), so the head rows of such a pair have no
-- interval (delta_se, delta_lo, delta_hi and significant NULL), as raw shares of other N; the
-- layer rows keep theirs (their replicates are exact under both methods). The figures
-- are given all the same. Heads are paired by index (layer, head): right for checkpoints of one
-- training run, fine-tunes of one model, or one model over other images; across independent
-- inits or trainings of one architecture (two seeds) head k of one is unrelated to head k of
-- the other (heads are exchangeable), so only the layer rows compare there.
-- Shares only: a head whose logit energy grew or shrank by any factor while keeping its mix
-- shows no delta (head_energy_changes compares the energies themselves).
-- A run id that no run has gives no rows.
-- params: run_a (required), run_b (required)
WITH pair AS (
    SELECT same_model, note, same_method, method_note
    FROM run_pairs WHERE run_a = $run_a AND run_b = $run_b
),
checked AS (
    SELECT
        count(*) FILTER (WHERE run_id = $run_a) > 0 AND count(*) FILTER (WHERE run_id = $run_b) > 0
            AS both_known,
        -- decoded images, not requested ones: a skipped image is not in the shares
        any_value(n_images - coalesce(n_skipped, 0)) FILTER (WHERE run_id = $run_a)
            AS n_images_a,
        any_value(n_images - coalesce(n_skipped, 0)) FILTER (WHERE run_id = $run_b)
            AS n_images_b
    FROM runs
),
corrected AS (
    -- a run decomposed before the corrected shares were stored holds none
    SELECT
        count(frac_pos_adj) FILTER (WHERE run_id = $run_a) > 0
        AND count(frac_pos_adj) FILTER (WHERE run_id = $run_b) > 0 AS both_corrected
    FROM layers WHERE run_id IN ($run_a, $run_b)
),
basis AS (
    SELECT
        both_known,
        n_images_a,
        n_images_b,
        CASE WHEN both_corrected THEN 'adjusted' ELSE 'raw' END AS basis,
        -- raw shares of other N: their deltas hold the chance level's change with N
        NOT both_corrected AND n_images_a IS DISTINCT FROM n_images_b AS raw_other_n,
        -- decomposed by other methods: a head share's interval is of another estimator in
        -- each (bfd.core.method)
        coalesce((SELECT NOT same_method FROM pair), false) AS other_methods
    FROM checked CROSS JOIN corrected
),
figures AS (
    SELECT run_id, 'layer' AS level, site, layer, CAST(NULL AS INTEGER) AS head,
        'frac_pos' AS metric,
        frac_pos AS raw, frac_pos_se AS raw_se, (frac_pos_hi - frac_pos_lo) / 2 AS raw_hw,
        frac_pos_adj AS adj, frac_pos_adj_se AS adj_se,
        (frac_pos_adj_hi - frac_pos_adj_lo) / 2 AS adj_hw
    FROM layers WHERE run_id IN ($run_a, $run_b)
    UNION ALL
    SELECT run_id, 'layer' AS level, site, layer, CAST(NULL AS INTEGER) AS head,
        'frac_img' AS metric,
        frac_img AS raw, frac_img_se AS raw_se, (frac_img_hi - frac_img_lo) / 2 AS raw_hw,
        frac_img_adj AS adj, frac_img_adj_se AS adj_se,
        (frac_img_adj_hi - frac_img_adj_lo) / 2 AS adj_hw
    FROM layers WHERE run_id IN ($run_a, $run_b)
    UNION ALL
    SELECT run_id, 'layer' AS level, site, layer, CAST(NULL AS INTEGER) AS head,
        'frac_int' AS metric,
        frac_int AS raw, frac_int_se AS raw_se, (frac_int_hi - frac_int_lo) / 2 AS raw_hw,
        frac_int_adj AS adj, frac_int_adj_se AS adj_se,
        (frac_int_adj_hi - frac_int_adj_lo) / 2 AS adj_hw
    FROM layers WHERE run_id IN ($run_a, $run_b)
    UNION ALL
    SELECT run_id, 'layer' AS level, site, layer, CAST(NULL AS INTEGER) AS head,
        'frac_content' AS metric,
        frac_content AS raw, frac_content_se AS raw_se, (frac_content_hi - frac_content_lo) / 2 AS raw_hw,
        frac_content_adj AS adj, frac_content_adj_se AS adj_se,
        (frac_content_adj_hi - frac_content_adj_lo) / 2 AS adj_hw
    FROM layers WHERE run_id IN ($run_a, $run_b)
    UNION ALL
    SELECT run_id, 'head' AS level, 'attn_in' AS site, layer, head AS head,
        'f_pp' AS metric,
        f_pp AS raw, f_pp_se AS raw_se, (f_pp_hi - f_pp_lo) / 2 AS raw_hw,
        f_pp_adj AS adj, f_pp_adj_se AS adj_se,
        (f_pp_adj_hi - f_pp_adj_lo) / 2 AS adj_hw
    FROM heads WHERE run_id IN ($run_a, $run_b)
    UNION ALL
    SELECT run_id, 'head' AS level, 'attn_in' AS site, layer, head AS head,
        'f_pc' AS metric,
        f_pc AS raw, f_pc_se AS raw_se, (f_pc_hi - f_pc_lo) / 2 AS raw_hw,
        f_pc_adj AS adj, f_pc_adj_se AS adj_se,
        (f_pc_adj_hi - f_pc_adj_lo) / 2 AS adj_hw
    FROM heads WHERE run_id IN ($run_a, $run_b)
    UNION ALL
    SELECT run_id, 'head' AS level, 'attn_in' AS site, layer, head AS head,
        'f_cp' AS metric,
        f_cp AS raw, f_cp_se AS raw_se, (f_cp_hi - f_cp_lo) / 2 AS raw_hw,
        f_cp_adj AS adj, f_cp_adj_se AS adj_se,
        (f_cp_adj_hi - f_cp_adj_lo) / 2 AS adj_hw
    FROM heads WHERE run_id IN ($run_a, $run_b)
    UNION ALL
    SELECT run_id, 'head' AS level, 'attn_in' AS site, layer, head AS head,
        'f_cc' AS metric,
        f_cc AS raw, f_cc_se AS raw_se, (f_cc_hi - f_cc_lo) / 2 AS raw_hw,
        f_cc_adj AS adj, f_cc_adj_se AS adj_se,
        (f_cc_adj_hi - f_cc_adj_lo) / 2 AS adj_hw
    FROM heads WHERE run_id IN ($run_a, $run_b)
),
chosen AS (
    SELECT
        f.*,
        CASE WHEN basis.basis = 'raw' THEN f.raw ELSE f.adj END AS value,
        CASE WHEN basis.raw_other_n OR (basis.other_methods AND f.level = 'head') THEN NULL
            WHEN basis.basis = 'raw' THEN f.raw_se ELSE f.adj_se END AS se,
        CASE WHEN basis.raw_other_n OR (basis.other_methods AND f.level = 'head') THEN NULL
            WHEN basis.basis = 'raw' THEN f.raw_hw ELSE f.adj_hw END AS hw
    FROM figures AS f
    CROSS JOIN basis
),
a AS (SELECT * FROM chosen WHERE run_id = $run_a),
b AS (SELECT * FROM chosen WHERE run_id = $run_b),
paired AS (
    SELECT
        coalesce(a.level, b.level) AS level,
        coalesce(a.site, b.site) AS site,
        coalesce(a.layer, b.layer) AS layer,
        coalesce(a.head, b.head) AS head,
        coalesce(a.metric, b.metric) AS metric,
        a.value AS value_a,
        b.value AS value_b,
        b.value - a.value AS delta,
        sqrt(a.se * a.se + b.se * b.se) AS delta_se,
        sqrt(a.hw * a.hw + b.hw * b.hw) AS delta_hw
    FROM a
    -- layer rows have no head: NULL keys must pair up too
    FULL OUTER JOIN b
        ON a.level = b.level AND a.site = b.site AND a.layer = b.layer
        AND a.head IS NOT DISTINCT FROM b.head AND a.metric = b.metric
)
SELECT
    CAST($run_a AS VARCHAR) AS run_a,
    CAST($run_b AS VARCHAR) AS run_b,
    p.level,
    p.site,
    p.layer,
    p.head,
    p.metric,
    basis.basis,
    basis.n_images_a,
    basis.n_images_b,
    pair.same_model,
    nullif(concat_ws('; ', pair.note, pair.method_note), '') AS note,
    p.value_a,
    p.value_b,
    p.delta,
    p.delta_se,
    p.delta - p.delta_hw AS delta_lo,
    p.delta + p.delta_hw AS delta_hi,
    CASE WHEN p.delta_hw IS NULL OR isnan(p.delta_hw) THEN NULL
        ELSE p.delta - p.delta_hw > 0 OR p.delta + p.delta_hw < 0 END AS significant
FROM paired AS p
CROSS JOIN basis
LEFT JOIN pair ON true
WHERE basis.both_known
ORDER BY p.level DESC, p.site, p.layer, p.head, p.metric
