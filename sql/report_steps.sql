-- Queries of `datamix report` (src/datamix/report/): the DAG, the funnel and its examples.
-- Each query follows a `-- name:` line; the report binds every value as a parameter
-- (table names through query_table(?)).

-- name: steps
-- Inputs: dm.steps. Grain: one row per step, in the order they ran.
SELECT name, kind, state, rows_in, rows_out, round(seconds, 2) AS seconds, parents, passthrough,
       config, started_at, finished_at, error
FROM dm.steps
ORDER BY started_at NULLS LAST, name;

-- name: drops
-- Inputs: dm.decisions. Grain: one row per (step, reason) of dropped samples.
SELECT step, coalesce(reason, 'dropped') AS reason, count(*) AS dropped
FROM dm.decisions WHERE NOT kept
GROUP BY ALL ORDER BY step, dropped DESC, reason;

-- name: quarantined
-- Inputs: dm.quarantine. Grain: one row per (step, reason) of unreadable input rows.
SELECT step, reason, count(*) AS rows, min(file || ':' || line) AS first_at
FROM dm.quarantine GROUP BY ALL ORDER BY step, rows DESC;

-- name: drop_examples
-- Inputs: dm.decisions. Grain: up to ? (parameter 1) dropped samples per (step, reason),
-- the lowest sample ids first (stable across reruns).
SELECT step, coalesce(reason, 'dropped') AS reason, sample_id, score, related_id
FROM (SELECT *, row_number() OVER (PARTITION BY step, reason ORDER BY sample_id) AS k
      FROM dm.decisions WHERE NOT kept)
WHERE k <= ?
ORDER BY step, reason, sample_id;

-- name: messages_of
-- Inputs: a step's output table (parameter 1), sample ids (parameter 2, a list).
-- Grain: one row per sample found there.
SELECT sample_id, messages FROM query_table(?) WHERE list_contains(?, sample_id);

-- name: has_columns
-- Inputs: duckdb_columns(). Grain: one row per named column the table (parameter 1) has.
SELECT column_name FROM duckdb_columns()
WHERE schema_name = 'main' AND table_name = ? AND list_contains(?, column_name);

-- name: has_view
-- Inputs: the catalog. Grain: one row, 1 when schema.name (parameters 1, 2) exists.
SELECT (SELECT count(*) FROM duckdb_views() WHERE schema_name = ? AND view_name = ?)
     + (SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?) AS found;
