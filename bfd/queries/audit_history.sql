-- audit_history: the audits of a series in series order (step, then start time), each with
-- its run's model_summary figures and their change since the previous audit of the same
-- series (delta_* = this - previous; NULL for the first). An audit that reused its run
-- repeats its figures. series restricts to one series, model to the series of one model
-- (each series is still chained on its own: seeds, checkpoints and fine-tunes of one
-- architecture are never each other's previous audit).
-- params: series (optional), model (optional)
SELECT
    a.series,
    a.step,
    a.audit_id,
    a.prev_audit_id,
    a.started_at,
    a.finished_at,
    a.trigger,
    a.n_flagged,
    s.model,
    a.run_id,
    s.created_at,
    lag(a.run_id) OVER audits AS prev_run_id,
    s.n_images,
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
    s.n_heads_pp,
    s.n_heads_cp,
    s.n_heads_cc,
    s.f_pp - lag(s.f_pp) OVER audits AS delta_f_pp,
    s.f_pc - lag(s.f_pc) OVER audits AS delta_f_pc,
    s.f_cp - lag(s.f_cp) OVER audits AS delta_f_cp,
    s.f_cc - lag(s.f_cc) OVER audits AS delta_f_cc,
    s.frac_pos_mean - lag(s.frac_pos_mean) OVER audits AS delta_frac_pos_mean,
    s.n_heads_pp - lag(s.n_heads_pp) OVER audits AS delta_n_heads_pp,
    s.n_heads_cp - lag(s.n_heads_cp) OVER audits AS delta_n_heads_cp,
    s.n_heads_cc - lag(s.n_heads_cc) OVER audits AS delta_n_heads_cc,
    s.n_heads_undefined
FROM audits AS a
JOIN run_summary AS s USING (run_id)
WHERE a.status = 'complete'
    AND (CAST($series AS VARCHAR) IS NULL OR a.series = $series)
    AND (CAST($model AS VARCHAR) IS NULL OR s.model = $model)
WINDOW audits AS (PARTITION BY a.series ORDER BY a.step, a.started_at, a.audit_id)
ORDER BY a.series, a.step, a.started_at, a.audit_id
