-- model_summary: one row per model (its timm name, then its --model-arg options where its runs
-- were given any, as bfd runs spells it: one timm name built with other arguments is two
-- models; every model parameter of the named queries takes that spelling), from its latest
-- complete run (largest
-- created_at) whatever its weights, prefix option, images and img_size: weights says which
-- ('pretrained', 'random' or the checkpoint file), prefix with which decompose --prefix
-- option (include or exclude: the positions its shares are over; two models' shares of
-- other prefix options are over other positions), images which image set (run_shapes': the
-- source's name, '@' and 12 hex digits of images_sha256, e.g. samples@3f2a9c1d0b7e) and
-- img_size at which input size; run_summary has a row for every run.
-- f_*: energy-weighted fractions (energies summed over all layers and heads, then divided);
-- mean_f_*: plain mean of the head fractions; frac_pos_mean: mean over layers of frac_pos at
-- attn_in; n_heads_pp / _cp / _cc: heads per stored head_type (position-position,
-- content-position, content-content); n_heads_undefined: heads with zero or non-finite
-- energies (head_type 'undefined'); n_images: the images the run requested; n_decoded: the
-- images it decoded and decomposed (n_images less those that failed to decode,
-- runs.n_skipped), the N its shares depend on: raw shares fall with N, so compare models of
-- other n_decoded by the chance-corrected columns, frac_pos_adj_mean and f_*_adj (run_summary's,
-- docs/method.md), whose expectation does not depend on N; layers: the layers its run stored
-- (runs.layers, e.g. 0,5,11), which every figure here is over; model_logit_residual_max,
-- model_attn_residual_max: the largest check against the model over those layers
-- (docs/checks.md): about 1e-6 and 1e-7 for a correct decomposition; above 1e-3 the check
-- failed (bfd audit and bfd decompose warn) and the run's shares may be wrong; NULL for a run
-- extracted before the check.
-- params: none
SELECT
    s.model,
    s.run_id,
    s.weights,
    sh.prefix,
    sh.images,
    sh.img_size,
    s.created_at,
    s.n_images,
    s.n_decoded,
    s.n_layers,
    s.n_heads,
    s.f_pp,
    s.f_pc,
    s.f_cp,
    s.f_cc,
    s.mean_f_pp,
    s.mean_f_pc,
    s.mean_f_cp,
    s.mean_f_cc,
    s.frac_pos_mean,
    s.frac_pos_resid_mean,
    s.n_heads_pp,
    s.n_heads_cp,
    s.n_heads_cc,
    s.n_heads_undefined,
    latest_runs.layers,
    s.frac_pos_adj_mean,
    s.f_pp_adj,
    s.f_pc_adj,
    s.f_cp_adj,
    s.f_cc_adj,
    s.model_logit_residual_max,
    s.model_attn_residual_max
FROM run_summary AS s
JOIN latest_runs USING (run_id)
LEFT JOIN run_shapes AS sh USING (run_id)
ORDER BY s.model
