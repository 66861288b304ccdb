-- drift: the drift rows of one audit of a series (its latest audit when audit_id is not
-- given), flagged rows first, then by size of the change. One row per (layer, metric) and
-- (layer, head, metric): before, after, delta = after - before, the threshold and whether
-- |delta| > threshold. head is NULL for layer metrics; head_type rows have no before/after
-- and delta 1 when the type changed; type_before and type_after name the types as the audit
-- compared them (NULL in drift written before drift kept them: head_type_changes of the two
-- runs names their current types). comparable: whether the two audits' runs are comparable
-- by the drift check's rule (one model, the same images, decoded N and img_size, and prefix
-- option: bfd.tasks.drift.not_comparable); false only in drift an earlier bfd compared across
-- runs that the current one refuses to compare (e.g. N 32 -> 8: raw shares move with N on an
-- unchanged model), whose rows are no drift: flagged false (before, after, delta and
-- threshold kept), its audit's n_flagged 0 and drift_note saying so (audit_history); as its
-- file says where a run of the two is left out of the catalog (damaged: unknown; true in drift
-- the current check wrote, NULL in older drift).
-- params: series (required), audit_id (optional)
-- (bfd.queries.hints reads the `chosen` CTE below to say why an audit has no drift rows.)
WITH chosen AS (
    SELECT audit_id, series, step, run_id, started_at
    FROM audits
    WHERE series = $series
        AND status = 'complete'
        AND (CAST($audit_id AS VARCHAR) IS NULL OR audit_id = $audit_id)
    QUALIFY row_number() OVER (ORDER BY step DESC, started_at DESC, audit_id DESC) = 1
)
SELECT
    c.series,
    c.step,
    d.audit_id,
    d.prev_audit_id,
    p.run_id AS prev_run_id,
    c.run_id,
    d.layer,
    d.head,
    d.metric,
    d.before,
    d.after,
    d.delta,
    d.threshold,
    d.flagged,
    d.type_before,
    d.type_after,
    d.comparable
FROM drift AS d
JOIN chosen AS c USING (audit_id)
LEFT JOIN audits AS p ON p.audit_id = d.prev_audit_id
ORDER BY d.flagged DESC, abs(d.delta) DESC NULLS LAST, d.layer, d.head NULLS FIRST, d.metric
