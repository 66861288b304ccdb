-- drift_since: the slow drift that an audit's own drift misses (each audit is compared with
-- the one before it, so a change of 0.03 a week is never flagged at 0.05 and is 0.3 after ten
-- weeks): every later complete audit of a series against one fixed audit of it, the baseline
-- (the latest complete audit at step `since`; the series' first when since is not given), on
-- the values the drift check compares: per layer frac_pos, frac_img and frac_int of each site
-- (frac_pos at attn_in, frac_pos_resid at resid, ...), per head f_pp, f_pc, f_cp, f_cc and
-- head_type (delta 1 when the type differs, before and after NULL, type_before and
-- type_after the types). delta = after - before, flagged when |delta| > threshold (default
-- 0.05, as bfd audit's --drift-threshold; a head_type row when its type changed). Values are
-- the runs' current results (the layers and heads tables), not those an audit kept. An audit
-- whose run is not comparable with the baseline's by the drift check's rule (one model, the
-- same images and decoded N, img_size and prefix option: run_pairs' note, audit_history's
-- comparable) has no rows: its shares are of other inputs, not a drift of the model.
-- Newest audit first; in an audit, flagged rows first, then the largest |delta|.
-- params: series (required), since (optional), threshold (default 0.05)
WITH settings AS (
    SELECT
        CASE
            WHEN TRY_CAST($threshold AS DOUBLE) BETWEEN 0 AND 1
                THEN TRY_CAST($threshold AS DOUBLE)
            ELSE error('drift_since: threshold must be a number from 0 to 1; given '
                       || $threshold)
        END AS fraction_threshold,
        CASE
            WHEN $since IS NULL THEN NULL
            WHEN regexp_full_match(CAST($since AS VARCHAR), '-?[0-9]+')
                THEN TRY_CAST($since AS BIGINT)
            ELSE error('drift_since: since must be a step (an integer); given ' || $since)
        END AS since
),
audited AS (
    SELECT audit_id, step, started_at, run_id,
        row_number() OVER (ORDER BY step, started_at, audit_id) AS k
    FROM audits
    WHERE series = $series AND status = 'complete'
),
base AS (
    SELECT audited.*
    FROM audited
    CROSS JOIN settings
    WHERE settings.since IS NULL OR step = settings.since
    QUALIFY row_number() OVER (
        ORDER BY CASE WHEN settings.since IS NULL THEN k END, k DESC) = 1
),
pairs AS (
    SELECT a.audit_id, a.step, a.run_id, a.k, b.audit_id AS since_audit_id,
        b.step AS since_step, b.run_id AS since_run_id
    FROM audited AS a
    CROSS JOIN base AS b
    JOIN run_pairs AS p ON p.run_a = b.run_id AND p.run_b = a.run_id
    JOIN runs AS ra ON ra.run_id = a.run_id
    JOIN runs AS rb ON rb.run_id = b.run_id
    WHERE a.k > b.k
        AND p.same_model AND p.note IS NULL
        AND ra.n_images - coalesce(ra.n_skipped, 0) = rb.n_images - coalesce(rb.n_skipped, 0)
),
-- the runs compared, their rows alone unpivoted (a store holds hundreds of runs)
compared_runs AS (
    SELECT run_id FROM pairs UNION SELECT since_run_id FROM pairs
),
layer_values AS (
    SELECT run_id, layer, NULL::INTEGER AS head,
        metric || CASE WHEN site = 'attn_in' THEN '' ELSE '_' || site END AS metric,
        value, NULL::VARCHAR AS head_type
    FROM (UNPIVOT (SELECT run_id, layer, site, frac_pos, frac_img, frac_int FROM layers
                   WHERE run_id IN (SELECT run_id FROM compared_runs))
          ON frac_pos, frac_img, frac_int INTO NAME metric VALUE value)
),
head_values AS (
    SELECT run_id, layer, head, metric, value, NULL::VARCHAR AS head_type
    FROM (UNPIVOT (SELECT run_id, layer, head, f_pp, f_pc, f_cp, f_cc FROM heads
                   WHERE run_id IN (SELECT run_id FROM compared_runs))
          ON f_pp, f_pc, f_cp, f_cc INTO NAME metric VALUE value)
    UNION ALL
    SELECT run_id, layer, head, 'head_type', NULL, head_type FROM heads
    WHERE run_id IN (SELECT run_id FROM compared_runs)
),
value_rows AS (
    SELECT * FROM layer_values UNION ALL SELECT * FROM head_values
),
compared AS (
    SELECT p.*, v.layer, v.head, v.metric,
        CASE WHEN isfinite(w.value) THEN w.value END AS before,
        CASE WHEN isfinite(v.value) THEN v.value END AS after,
        w.head_type AS type_before, v.head_type AS type_after
    FROM pairs AS p
    JOIN value_rows AS v ON v.run_id = p.run_id
    JOIN value_rows AS w ON w.run_id = p.since_run_id AND w.layer = v.layer
        AND w.head IS NOT DISTINCT FROM v.head AND w.metric = v.metric
),
deltas AS (
    SELECT compared.*,
        CASE WHEN metric = 'head_type'
            THEN CAST(type_before IS DISTINCT FROM type_after AS DOUBLE)
            ELSE after - before END AS delta,
        CASE WHEN metric = 'head_type' THEN 0.5 ELSE settings.fraction_threshold END AS threshold
    FROM compared
    CROSS JOIN settings
)
SELECT
    CAST($series AS VARCHAR) AS series,
    step,
    audit_id,
    run_id,
    since_step,
    since_audit_id,
    since_run_id,
    layer,
    head,
    metric,
    before,
    after,
    delta,
    threshold,
    coalesce(abs(delta) > threshold, false) AS flagged,
    type_before,
    type_after
FROM deltas
ORDER BY k DESC, flagged DESC, abs(delta) DESC NULLS LAST, layer, head NULLS FIRST, metric
