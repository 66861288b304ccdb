-- run_shapes: one row per complete run, what run_pairs compares of it: model (the timm name,
-- then the run's --model-arg options as JSON where it has any); architecture (the timm name
-- less any pretrained tag, which chooses weights as a checkpoint does, with those options); depth,
-- num_heads and width (NULL where the run does not hold them: 0 or NULL in a run published
-- before these columns); prefix (the decomposition's prefix option, 'exclude' when the run's
-- config does not say or the run has no prefix token (SigLIP, class_token=False: include is
-- then the same positions, so its shares compare with exclude's)); shape (depth, heads and width in words, '?' for one not held);
-- images_sha256 (the hash of the run's image list: its order, ids and file bytes) and images,
-- the image set in short: its source's name (the folder's or manifest file's, or samples),
-- '@' and the first 12 hex digits of images_sha256 (NULL when the run holds no hash);
-- img_size (the model's input size, NULL where not held); method (runs.method: the method
-- version of the run's results, bfd.core.method; 1 for a run published before it was kept). The
-- dashboard embeds these rows and derives each pair's same_model and note from them as
-- run_pairs does (bfd/report/assets/dashboard.js pairOf), one row a run instead of one a pair.
SELECT
    run_id,
    -- with the --model-arg options of the run, when given (bfd.storage.model_label):
    -- two runs of one timm name built with other arguments are two models
    model || coalesce(' ' || model_args, '') AS model,
    split_part(model, '.', 1) || coalesce(' ' || model_args, '') AS architecture,
    nullif(depth, 0) AS depth,
    nullif(num_heads, 0) AS num_heads,
    nullif(width, 0) AS width,
    -- json_valid: a runs row of other JSON than bfd's must not fail every pair's query; a run
    -- with no prefix token: exclude, whatever its option (include is the same positions)
    CASE WHEN prefix_tokens = 0 THEN 'exclude' ELSE coalesce(CASE WHEN json_valid(config_json)
        THEN json_extract_string(config_json, '$.decompose.prefix') END, 'exclude') END
        AS prefix,
    concat('depth ', coalesce(CAST(nullif(depth, 0) AS VARCHAR), '?'), ', ',
        coalesce(CAST(nullif(num_heads, 0) AS VARCHAR), '?'), ' heads and width ',
        coalesce(CAST(nullif(width, 0) AS VARCHAR), '?')) AS shape,
    nullif(images_sha256, '') AS images_sha256,
    CASE WHEN nullif(images_sha256, '') IS NOT NULL
        THEN concat(coalesce(nullif(regexp_extract(rtrim(images, '/\'), '[^/\\]*$'), ''), '?'),
            '@', left(images_sha256, 12)) END AS images,
    nullif(img_size, 0) AS img_size,
    method
FROM (
    SELECT *, CASE WHEN json_valid(config_json) THEN CAST(json_extract(config_json,
        '$.request.extra.model_args') AS VARCHAR) END AS model_args
    FROM runs
)
WHERE status = 'complete'
