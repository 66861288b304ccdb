-- head_type_changes: the heads whose stored head_type differs between two runs (any two run
-- ids: two checkpoints, two seeds, two fine-tunes of one architecture), with both types and
-- both runs' head fractions. Heads only one run holds are left out. same_model and note as in
-- compare_runs: the types of two models' heads l, h (note says so), or of shares over other
-- positions, differ without any head changing.
-- params: run_a (required), run_b (required)
WITH seen AS (
    SELECT
        run_id,
        model,
        -- a pretrained tag (vit_b.augreg_in21k) chooses weights, not the architecture
        split_part(model, '.', 1) AS architecture,
        -- 0 or NULL: a run published before these columns (not compared)
        nullif(depth, 0) AS depth,
        nullif(num_heads, 0) AS num_heads,
        nullif(width, 0) AS width,
        coalesce(json_extract_string(config_json, '$.decompose.prefix'), 'exclude') AS prefix,
        concat('depth ', coalesce(CAST(nullif(depth, 0) AS VARCHAR), '?'), ', ',
            coalesce(CAST(nullif(num_heads, 0) AS VARCHAR), '?'), ' heads and width ',
            coalesce(CAST(nullif(width, 0) AS VARCHAR), '?')) AS shape
    FROM runs
    WHERE run_id IN ($run_a, $run_b) AND status = 'complete'
),
pair AS (
    SELECT
        a.architecture = b.architecture
            AND coalesce(a.depth = b.depth, true)
            AND coalesce(a.num_heads = b.num_heads, true)
            AND coalesce(a.width = b.width, true) AS same_model,
        nullif(concat_ws('; ',
            CASE
                WHEN a.architecture <> b.architecture
                    THEN 'run_a is of ' || a.model || ', run_b of ' || b.model
                WHEN NOT (coalesce(a.depth = b.depth, true)
                    AND coalesce(a.num_heads = b.num_heads, true)
                    AND coalesce(a.width = b.width, true))
                    THEN 'run_a is of ' || a.model || ' of ' || a.shape || ', run_b of '
                        || b.shape
            END || ': two models, whose layer and head l are not one layer changing '
                || '(compare_models aligns relative depth)',
            CASE WHEN a.prefix <> b.prefix
                THEN 'run_a was decomposed with prefix ' || a.prefix || ', run_b with prefix '
                    || b.prefix || ': shares over other positions'
            END), '') AS note
    FROM seen AS a, seen AS b
    WHERE a.run_id = $run_a AND b.run_id = $run_b
    LIMIT 1
)
SELECT
    a.layer,
    a.head,
    a.head_type AS head_type_a,
    b.head_type AS head_type_b,
    a.f_pp AS f_pp_a,
    b.f_pp AS f_pp_b,
    a.f_pc AS f_pc_a,
    b.f_pc AS f_pc_b,
    a.f_cp AS f_cp_a,
    b.f_cp AS f_cp_b,
    a.f_cc AS f_cc_a,
    b.f_cc AS f_cc_b,
    a.run_id AS run_a,
    b.run_id AS run_b,
    pair.same_model,
    pair.note
FROM heads AS a
JOIN heads AS b ON a.layer = b.layer AND a.head = b.head
LEFT JOIN pair ON true
WHERE a.run_id = $run_a AND b.run_id = $run_b AND a.head_type IS DISTINCT FROM b.head_type
ORDER BY a.layer, a.head
