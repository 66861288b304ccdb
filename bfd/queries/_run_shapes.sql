-- run_shapes: one row per complete run, what run_pairs compares of it: model; architecture
-- (the timm name less any pretrained tag, which chooses weights as a checkpoint does); depth,
-- num_heads and width (NULL where the run does not hold them: 0 or NULL in a run published
-- before these columns); prefix (the decomposition's prefix option, 'exclude' when the run's
-- config does not say); shape (depth, heads and width in words, '?' for one not held). The
-- dashboard embeds these rows and derives each pair's same_model and note from them as
-- run_pairs does (bfd/report/assets/dashboard.js pairOf), one row a run instead of one a pair.
SELECT
    run_id,
    model,
    split_part(model, '.', 1) AS architecture,
    nullif(depth, 0) AS depth,
    nullif(num_heads, 0) AS num_heads,
    nullif(width, 0) AS width,
    -- json_valid: a runs row of other JSON than bfd's must not fail every pair's query
    coalesce(CASE WHEN json_valid(config_json)
        THEN json_extract_string(config_json, '$.decompose.prefix') END, 'exclude') AS prefix,
    concat('depth ', coalesce(CAST(nullif(depth, 0) AS VARCHAR), '?'), ', ',
        coalesce(CAST(nullif(num_heads, 0) AS VARCHAR), '?'), ' heads and width ',
        coalesce(CAST(nullif(width, 0) AS VARCHAR), '?')) AS shape
FROM runs
WHERE status = 'complete'
