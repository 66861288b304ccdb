-- head_energy_changes: per head (layer, head) of either of two runs, each run's total logit
-- energy e_total = e_pp + e_pc + e_cp + e_cc and per image (e_total over the images it
-- decomposed, n_images - n_skipped: the stored energies are sums over images), ratio = b's
-- per-image energy over a's and log_ratio = ln(ratio), and each run's largest singular value
-- sigma_max of the head's bilinear map (modes; weights alone, no images). The scale that the
-- shares of compare_runs, head_type_changes and drift do not see: a head whose map grew 10-fold
-- keeps every share and type, and its energy grows 10^2 (sigma_max 10-fold). Largest
-- |log_ratio| first. Heads are paired by index: across two seeds or independent trainings
-- of one architecture head k of one is unrelated to head k of the other. Energies depend on
-- the images as well: same_model and note are the pair's in run_pairs, as compare_runs'.
-- A run id that no run has gives no rows.
-- params: run_a (required), run_b (required)
WITH pair AS (
    SELECT same_model, note FROM run_pairs WHERE run_a = $run_a AND run_b = $run_b
),
checked AS (
    SELECT
        count(*) FILTER (WHERE run_id = $run_a) > 0 AND count(*) FILTER (WHERE run_id = $run_b) > 0
            AS both_known,
        any_value(n_images - coalesce(n_skipped, 0)) FILTER (WHERE run_id = $run_a)
            AS n_images_a,
        any_value(n_images - coalesce(n_skipped, 0)) FILTER (WHERE run_id = $run_b)
            AS n_images_b
    FROM runs
),
sigma AS (
    SELECT run_id, layer, head, max(sigma) AS sigma_max
    FROM modes WHERE run_id IN ($run_a, $run_b)
    GROUP BY run_id, layer, head
),
energy AS (
    SELECT h.run_id, h.layer, h.head, h.e_pp + h.e_pc + h.e_cp + h.e_cc AS e_total,
        s.sigma_max
    FROM heads AS h
    LEFT JOIN sigma AS s USING (run_id, layer, head)
    WHERE h.run_id IN ($run_a, $run_b)
),
a AS (SELECT * FROM energy WHERE run_id = $run_a),
b AS (SELECT * FROM energy WHERE run_id = $run_b),
paired AS (
    SELECT
        coalesce(a.layer, b.layer) AS layer,
        coalesce(a.head, b.head) AS head,
        a.e_total AS e_total_a,
        b.e_total AS e_total_b,
        a.e_total / c.n_images_a AS e_per_image_a,
        b.e_total / c.n_images_b AS e_per_image_b,
        a.sigma_max AS sigma_max_a,
        b.sigma_max AS sigma_max_b
    FROM a
    FULL OUTER JOIN b ON a.layer = b.layer AND a.head = b.head
    CROSS JOIN checked AS c
)
SELECT
    CAST($run_a AS VARCHAR) AS run_a,
    CAST($run_b AS VARCHAR) AS run_b,
    p.layer,
    p.head,
    c.n_images_a,
    c.n_images_b,
    pair.same_model,
    pair.note,
    p.e_total_a,
    p.e_total_b,
    p.e_per_image_a,
    p.e_per_image_b,
    CASE WHEN p.e_per_image_a > 0 AND p.e_per_image_b >= 0
        THEN p.e_per_image_b / p.e_per_image_a END AS ratio,
    CASE WHEN p.e_per_image_a > 0 AND p.e_per_image_b > 0
        THEN ln(p.e_per_image_b / p.e_per_image_a) END AS log_ratio,
    p.sigma_max_a,
    p.sigma_max_b
FROM paired AS p
CROSS JOIN checked AS c
LEFT JOIN pair ON true
WHERE c.both_known
ORDER BY abs(log_ratio) DESC NULLS LAST, p.layer, p.head
