-- head_types: number of heads of each stored head_type per model and layer, from each model's
-- latest complete run. model restricts the rows to one model.
-- params: model (optional)
SELECT
    l.model,
    h.run_id,
    h.layer,
    h.head_type,
    count(*) AS n_heads
FROM heads AS h
JOIN latest_runs AS l USING (run_id)
WHERE CAST($model AS VARCHAR) IS NULL OR l.model = $model
GROUP BY l.model, h.run_id, h.layer, h.head_type
ORDER BY l.model, h.layer, h.head_type
