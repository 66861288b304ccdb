-- drift_compared (no view: what the catalog's fills read once per snapshot, catalog.py
-- _FILLS): one row per audit that holds drift rows, with whether its drift compared two runs
-- that the drift check compares today (bfd.tasks.drift.not_comparable): one model (run_pairs'
-- same_model, whatever its weights), the same images (images_sha256), decoded N and
-- img_size, and, where both audits kept their decomposition options, the same prefix option.
-- The current drift check writes no drift rows for any other pair (it says why in the audit's
-- drift_note instead), so comparable false marks drift an earlier bfd compared, e.g. across
-- another N (its raw shares' chance level moves with N: flags on an unchanged model).
-- comparable is NULL where either run is not in the catalog (left out as damaged: unknown).
-- note: what audit_history's drift_note says of such an audit (NULL when comparable);
-- n_flagged: the values its drift rows flagged. A layer set that differs is no reason here:
-- drift compares the layers both runs hold (audit_history's comparable is false then, its
-- model-level figures averaging other layers).
WITH pairs AS (
    SELECT
        a.audit_id,
        sa.run_id IS NOT NULL AND sb.run_id IS NOT NULL AS known,
        rp.same_model,
        sa.architecture <> sb.architecture AS other_name,
        sa.model AS model_a,
        sb.model AS model_b,
        sa.shape AS shape_a,
        sb.shape AS shape_b,
        CASE WHEN json_valid(p.decompose_json)
            THEN json_extract_string(p.decompose_json, '$.prefix') END AS prefix_a,
        CASE WHEN json_valid(a.decompose_json)
            THEN json_extract_string(a.decompose_json, '$.prefix') END AS prefix_b,
        sa.images_sha256 AS sha_a,
        sb.images_sha256 AS sha_b,
        ra.n_images - coalesce(ra.n_skipped, 0) AS n_a,
        rb.n_images - coalesce(rb.n_skipped, 0) AS n_b,
        sa.img_size AS size_a,
        sb.img_size AS size_b,
        (SELECT count(*) FROM drift AS d WHERE d.audit_id = a.audit_id AND d.flagged)
            AS n_flagged
    FROM audits AS a
    JOIN audits AS p ON p.audit_id = a.prev_audit_id
    LEFT JOIN run_shapes AS sa ON sa.run_id = p.run_id
    LEFT JOIN run_shapes AS sb ON sb.run_id = a.run_id
    LEFT JOIN runs AS ra ON ra.run_id = p.run_id AND ra.status = 'complete'
    LEFT JOIN runs AS rb ON rb.run_id = a.run_id AND rb.status = 'complete'
    LEFT JOIN run_pairs AS rp ON rp.run_a = p.run_id AND rp.run_b = a.run_id
    WHERE a.audit_id IN (SELECT audit_id FROM drift)
),
reasons AS (
    SELECT
        audit_id,
        known,
        n_flagged,
        CASE
            WHEN NOT same_model THEN 'another model ('
                || CASE WHEN other_name THEN model_a || ' -> ' || model_b
                    ELSE model_a || ' of ' || shape_a || ' -> ' || shape_b END || ')'
            WHEN prefix_a <> prefix_b
                THEN 'shares over other positions (--prefix ' || prefix_a || ' -> '
                    || prefix_b || ')'
            WHEN sha_a <> sha_b OR n_a <> n_b OR size_a <> size_b THEN
                CASE WHEN sha_a <> sha_b THEN 'other images'
                    WHEN n_a <> n_b THEN 'another decoded N' ELSE 'another img_size' END
                || ' (' || concat_ws(', ',
                    CASE WHEN sha_a <> sha_b
                        THEN 'images ' || left(sha_a, 12) || ' -> ' || left(sha_b, 12) END,
                    CASE WHEN n_a <> n_b THEN 'N ' || n_a || ' -> ' || n_b END,
                    CASE WHEN size_a <> size_b
                        THEN 'img_size ' || size_a || ' -> ' || size_b END) || ')'
        END AS why,
        CASE
            WHEN NOT same_model THEN 'layers and heads of two models are no change of one'
            WHEN prefix_a <> prefix_b THEN 'shares over other positions'
            ELSE 'raw shares change with the images and N, not only with the model'
        END AS since
    FROM pairs
)
SELECT
    audit_id,
    CASE WHEN known THEN why IS NULL END AS comparable,
    n_flagged,
    CASE WHEN known AND why IS NOT NULL THEN
        'compared by an earlier bfd across ' || why || ': not comparable (' || since || '); '
        || CASE WHEN n_flagged > 0 THEN 'its ' || n_flagged || ' flagged value(s) are no drift, '
            ELSE '' END
        || 'its drift rows say comparable false'
    END AS note
FROM reasons
