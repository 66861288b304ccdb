-- audit_history: every complete run (audit) of one model in created_at order, with the
-- model_summary figures of each and their change since the previous audit
-- (delta_* = this - previous; NULL for the first).
-- params: model (required)
SELECT
    model,
    run_id,
    created_at,
    lag(run_id) OVER audits AS prev_run_id,
    n_images,
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
    n_heads_pp,
    n_heads_cp,
    n_heads_cc,
    f_pp - lag(f_pp) OVER audits AS delta_f_pp,
    f_pc - lag(f_pc) OVER audits AS delta_f_pc,
    f_cp - lag(f_cp) OVER audits AS delta_f_cp,
    f_cc - lag(f_cc) OVER audits AS delta_f_cc,
    frac_pos_mean - lag(frac_pos_mean) OVER audits AS delta_frac_pos_mean,
    n_heads_pp - lag(n_heads_pp) OVER audits AS delta_n_heads_pp,
    n_heads_cp - lag(n_heads_cp) OVER audits AS delta_n_heads_cp,
    n_heads_cc - lag(n_heads_cc) OVER audits AS delta_n_heads_cc,
    n_heads_undefined
FROM run_summary
WHERE model = $model
WINDOW audits AS (ORDER BY created_at, run_id)
ORDER BY created_at, run_id
