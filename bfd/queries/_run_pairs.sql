-- run_pairs: every ordered pair of complete runs (run_a, run_b; a run with itself too), with
-- same_model: both are of one model, whatever its weights (the same timm name less any
-- pretrained tag, which chooses weights as a checkpoint does, built with the same --model-arg
-- options (run_shapes' architecture holds them), and the same depth, num_heads
-- and width where both runs hold them: 0 or NULL in a run published before these columns),
-- e.g. two checkpoints, seeds or fine-tunes; and note: NULL when run_b's per-layer and
-- per-head figures less run_a's are changes of one model over the same images and
-- positions, else why they are not, in one line of '; '-joined reasons: two models (layer
-- l of one is not layer l of the other; compare_models aligns relative depth),
-- shares decomposed with other prefix options (over other positions), other images
-- (images_sha256 differs: shares change with the images, not only with the model), another
-- img_size (another patch grid: other positions); inputs_note: those reasons less the first
-- (the runs' inputs: prefix option, images, img_size; NULL when the same or not held), what
-- compare_models says of its two runs; same_method: both runs' results are of one method
-- version (runs.method, bfd.core.method; NULL where either is not held) and method_note: NULL
-- when so, else that the runs were decomposed by other methods, whose head shares' intervals
-- are of two estimators (method 1's jackknife gave standard errors off by up to 28 %:
-- docs/layout.md, "Method versions"), and the command that decomposes the older run again.
-- It is no reason in note: point shares, energies and head types are the same under methods
-- 1 and 2, so the deltas are changes of one model all the same; compare_runs adds it to its
-- note and gives its head rows no interval. These are the inputs whose change the
-- drift check (bfd.tasks.drift.not_comparable) and audit_history's comparable refuse too;
-- another decoded N comes with another image list (images_sha256 hashes it), and
-- compare_runs then compares the chance-corrected shares. A reason is left out where either
-- run does not hold its column (NULL). compare_runs, head_type_changes, audit_history and
-- the dashboard's head-type changes read it; bfd.tasks.drift.same_model is its Python twin,
-- and the dashboard's pairOf (bfd/report/assets/dashboard.js) its twin from run_shapes' rows.
WITH pairs AS (
    SELECT
        a.run_id AS run_a,
        b.run_id AS run_b,
        a.model AS model_a,
        b.model AS model_b,
        a.architecture = b.architecture
            AND coalesce(a.depth = b.depth, true)
            AND coalesce(a.num_heads = b.num_heads, true)
            AND coalesce(a.width = b.width, true) AS same_model,
        a.architecture <> b.architecture AS other_name,
        a.shape AS a_shape,
        b.shape AS b_shape,
        a.prefix AS prefix_a,
        b.prefix AS prefix_b,
        a.images_sha256 AS sha_a,
        b.images_sha256 AS sha_b,
        a.images AS images_a,
        b.images AS images_b,
        a.img_size AS img_size_a,
        b.img_size AS img_size_b,
        a.method AS method_a,
        b.method AS method_b
    FROM run_shapes AS a, run_shapes AS b
),
reasons AS (
    SELECT
        run_a,
        run_b,
        model_a,
        model_b,
        same_model,
        CASE
            WHEN other_name THEN 'run_a is of ' || model_a || ', run_b of ' || model_b
            WHEN NOT same_model
                THEN 'run_a is of ' || model_a || ' of ' || a_shape || ', run_b of ' || b_shape
        END || ': two models, so layer l of one is not layer l of the other '
            || '(compare_models aligns relative depth)' AS models_note,
        nullif(concat_ws('; ',
            CASE WHEN prefix_a <> prefix_b
                THEN 'run_a was decomposed with prefix ' || prefix_a || ', run_b with prefix '
                    || prefix_b || ': shares over other positions'
            END,
            CASE WHEN sha_a <> sha_b
                THEN 'run_a saw images ' || images_a || ', run_b ' || images_b
                    || ': other images, whose shares change with the images, not only with '
                    || 'the model'
            END,
            CASE WHEN img_size_a <> img_size_b
                THEN 'run_a was at img_size ' || img_size_a || ', run_b at ' || img_size_b
                    || ': another patch grid, shares over other positions'
            END), '') AS inputs_note,
        method_a = method_b AS same_method,
        CASE WHEN method_a <> method_b
            THEN 'run_a was decomposed by method ' || method_a || ', run_b by method '
                || method_b || ': head shares'' intervals of two estimators'
                || CASE WHEN least(method_a, method_b) = 1
                    THEN ' (method 1''s standard errors off by up to 28 %)' ELSE '' END
                || ', not compared; bfd decompose '
                || CASE WHEN method_a < method_b THEN run_a ELSE run_b END
                || ' decomposes '
                || CASE WHEN method_a < method_b THEN 'run_a' ELSE 'run_b' END
                || ' again by the installed method'
        END AS method_note
    FROM pairs
)
SELECT
    run_a,
    run_b,
    model_a,
    model_b,
    same_model,
    nullif(concat_ws('; ', models_note, inputs_note), '') AS note,
    inputs_note,
    same_method,
    method_note
FROM reasons
