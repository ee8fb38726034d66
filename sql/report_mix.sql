-- Queries of `datamix report`: the mix, shards, training, evaluation and cost.

-- name: mixes
-- Inputs: dm.steps. Grain: one row per mix step with its requested ratio and unit.
SELECT name, json_extract(config, '$.ratio') AS ratio, json_extract_string(config, '$.unit') AS unit
FROM dm.steps WHERE kind = 'mix' AND state = 'done' ORDER BY started_at, name;

-- name: composition
-- Inputs: a mix step's table (parameter 1) through dm.composition (sql/composition.sql).
-- Grain: one row per source.
SELECT * FROM dm.composition(?);

-- name: shard_folders
-- Inputs: dm.steps and every export step's table with a `folder` column (format: shards).
-- Grain: one row per shards export step; parameter 1 is the step's table.
SELECT any_value(folder) AS folder, count(*) AS samples,
       count(*) FILTER (WHERE status = 'truncated') AS truncated
FROM query_table(?);

-- name: train_steps
-- Inputs: dm.steps and a train step's table (parameter 1). Grain: one row per trained model.
SELECT model_path, base_model, steps, final_loss, tokens FROM query_table(?);

-- name: forgetting
-- Inputs: dm.forgetting (sql/forgetting.sql, when the store has evaluations). Grain: one
-- row per (evaluate step, arm, metric).
SELECT * FROM dm.forgetting ORDER BY step, metric, model;

-- name: metric_values
-- Inputs: dm.metrics. Grain: one row per (evaluate step, model, set, metric).
SELECT step, model, "set", role, metric, value, stderr, n FROM dm.metrics ORDER BY step, metric, "set", model;

-- name: cost
-- Inputs: dm.cost (sql/calls.sql). Grain: one row per (step, model).
SELECT * FROM dm.cost;
