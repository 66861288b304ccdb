-- audit_history: the audits of a series in series order (step, then start time), each with the
-- model_summary figures of its run as that audit saw them (kept in its audits row: a later
-- decomposition of the run with other options does not change them; audits written before
-- audits kept them show their run's current figures) and their change since its previous audit
-- (delta_* = this - previous; NULL for the first): prev_audit_id, the audit its drift was
-- compared with when it ran (the latest complete audit of the series at or before its step then
-- whose run was comparable with its own: audits of another model, other images, N, img_size or
-- prefix option in between were skipped; when none was, the latest, and drift_note says why; an
-- audit backfilled later at a step in between does not change it), so "previous" is that audit,
-- not always the row before. An audit that reused its run repeats its figures. series restricts
-- to one series, model to the series of one model (each series is still chained on its own:
-- seeds, checkpoints and fine-tunes of one architecture are never each other's previous audit).
-- comparable: the two runs are of one model (the same timm name less any pretrained tag, depth,
-- num_heads and width; its weights may differ), saw the same images (images_sha256), decoded N,
-- img_size and layers, and were decomposed with the same prefix option; when false the figures
-- are of another model, over other images, another set of layers or other positions, so every
-- delta_* is NULL (not a change of the model); NULL for the first audit of a series.
-- results_version: the published results the audit saw; drift_note: why the audit's drift was
-- not compared (no earlier audit was comparable; said of the previous audit; NULL when it was
-- compared), or, of an audit whose drift an earlier bfd compared across runs the drift check
-- refuses today (another N, other images, img_size, model or prefix option), that it is not
-- comparable ('compared by an earlier bfd across other images (...): not comparable ...'),
-- its n_flagged then 0 (its drift rows say comparable false: the drift query). An audit whose run the catalog left out (a damaged table file or pointer, named on
-- stderr: bfd verify RUN) is still listed, with its run's columns (model, created_at, n_images,
-- n_decoded) NULL and the figures it kept (NULL if it kept none); comparable and every delta_*
-- of it, and of an audit compared with it, are NULL (their inputs are unknown). With model,
-- such an audit is listed in the series that hold an audit of that model's runs. n_images,
-- n_decoded: the images its run requested and decoded (as model_summary); model as
-- model_summary spells it (with the run's --model-arg options, where it has any).
-- frac_pos_adj_mean, f_*_adj (chance-corrected: their expectation does not move with N) and
-- model_*_residual_max (the check against the model) as the audit saw them: NULL for an audit
-- written before audits kept them (2026-12-04), but one that kept no figures at all.
-- params: series (optional), model (optional)
WITH seen AS (
    SELECT
        a.*,
        sh.model,
        r.created_at,
        r.n_images,
        r.images_sha256,
        r.n_images - coalesce(r.n_skipped, 0) AS n_decoded,
        r.img_size,
        r.layers,
        coalesce(json_extract_string(a.decompose_json, '$.prefix'),
                 json_extract_string(r.config_json, '$.decompose.prefix'), 'exclude') AS prefix,
        -- left out of the catalog (damaged): not in runs at all
        r.run_id IS NULL AS run_left_out
    FROM audits AS a
    LEFT JOIN runs AS r ON r.run_id = a.run_id
    LEFT JOIN run_shapes AS sh ON sh.run_id = a.run_id
    WHERE a.status = 'complete'
        AND (r.run_id IS NULL OR r.status = 'complete')
        AND (CAST($series AS VARCHAR) IS NULL OR a.series = $series)
        AND (CAST($model AS VARCHAR) IS NULL OR sh.model = $model
             OR (r.run_id IS NULL AND a.series IN (
                 SELECT s.series FROM audits AS s JOIN run_shapes AS m ON m.run_id = s.run_id
                 WHERE m.model = $model)))
),
history AS (
    SELECT
        a.*,
        p.run_id AS prev_run_id,
        a.prev_audit_id IS NOT NULL AS has_prev,
        a.run_left_out OR coalesce(p.run_left_out, false) AS unknown_inputs,
        -- one model (run_pairs.same_model), whatever its weights
        (SELECT same_model FROM run_pairs WHERE run_a = p.run_id AND run_b = a.run_id)
            AND a.images_sha256 = p.images_sha256
            AND a.n_decoded = p.n_decoded
            AND a.img_size = p.img_size
            AND a.layers = p.layers
            AND a.prefix = p.prefix AS same_inputs,
        p.f_pp AS prev_f_pp,
        p.f_pc AS prev_f_pc,
        p.f_cp AS prev_f_cp,
        p.f_cc AS prev_f_cc,
        p.frac_pos_mean AS prev_frac_pos_mean,
        p.frac_pos_resid_mean AS prev_frac_pos_resid_mean,
        p.n_heads_pp AS prev_n_heads_pp,
        p.n_heads_cp AS prev_n_heads_cp,
        p.n_heads_cc AS prev_n_heads_cc
    FROM seen AS a
    LEFT JOIN seen AS p ON p.audit_id = a.prev_audit_id
)
SELECT
    series,
    step,
    audit_id,
    prev_audit_id,
    started_at,
    finished_at,
    trigger,
    n_flagged,
    drift_note,
    model,
    run_id,
    created_at,
    results_version,
    prev_run_id,
    n_images,
    n_decoded,
    n_layers,
    n_heads,
    f_pp,
    f_pc,
    f_cp,
    f_cc,
    mean_f_pp,
    mean_f_pc,
    mean_f_cp,
    mean_f_cc,
    frac_pos_mean,
    frac_pos_resid_mean,
    n_heads_pp,
    n_heads_cp,
    n_heads_cc,
    CASE WHEN has_prev AND NOT unknown_inputs THEN coalesce(same_inputs, false) END
        AS comparable,
    CASE WHEN same_inputs THEN f_pp - prev_f_pp END AS delta_f_pp,
    CASE WHEN same_inputs THEN f_pc - prev_f_pc END AS delta_f_pc,
    CASE WHEN same_inputs THEN f_cp - prev_f_cp END AS delta_f_cp,
    CASE WHEN same_inputs THEN f_cc - prev_f_cc END AS delta_f_cc,
    CASE WHEN same_inputs THEN frac_pos_mean - prev_frac_pos_mean END AS delta_frac_pos_mean,
    CASE WHEN same_inputs THEN frac_pos_resid_mean - prev_frac_pos_resid_mean END
        AS delta_frac_pos_resid_mean,
    CASE WHEN same_inputs THEN n_heads_pp - prev_n_heads_pp END AS delta_n_heads_pp,
    CASE WHEN same_inputs THEN n_heads_cp - prev_n_heads_cp END AS delta_n_heads_cp,
    CASE WHEN same_inputs THEN n_heads_cc - prev_n_heads_cc END AS delta_n_heads_cc,
    n_heads_undefined,
    frac_pos_adj_mean,
    f_pp_adj,
    f_pc_adj,
    f_cp_adj,
    f_cc_adj,
    model_logit_residual_max,
    model_attn_residual_max
FROM history
ORDER BY series, step, started_at, audit_id
