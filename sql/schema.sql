-- The store's bookkeeping schema. Step outputs live in the main schema as tables
-- (or views, for pass-through steps) named after the step; everything about how
-- they were made lives here, in schema dm.
-- Grain: one row per pipeline run / step / committed chunk / lineage edge /
-- decision / quarantined input row / cached model response.
CREATE SCHEMA IF NOT EXISTS dm;

CREATE TABLE IF NOT EXISTS dm.runs (
    run_id      VARCHAR PRIMARY KEY,
    pipeline    VARCHAR,        -- pipeline name from the YAML
    spec_path   VARCHAR,
    started_at  TIMESTAMP,
    finished_at TIMESTAMP,
    status      VARCHAR,        -- running | done | failed
    pid         INTEGER
);

CREATE TABLE IF NOT EXISTS dm.steps (
    name        VARCHAR PRIMARY KEY,
    kind        VARCHAR,
    fingerprint VARCHAR,
    config      JSON,           -- the resolved config (no secrets: YAML names env vars, not keys)
    parents     JSON,           -- {label: step}
    passthrough BOOLEAN,        -- output is the parent's rows minus dropped decisions (same sample ids)
    state       VARCHAR,        -- pending | partial | done | failed
    rows_in     BIGINT DEFAULT 0,
    rows_out    BIGINT DEFAULT 0,
    seconds     DOUBLE DEFAULT 0,
    started_at  TIMESTAMP,
    finished_at TIMESTAMP,
    error       VARCHAR,
    run_id      VARCHAR
);

CREATE TABLE IF NOT EXISTS dm.chunks (
    step         VARCHAR,
    key          VARCHAR,
    rows_in      BIGINT,
    rows_out     BIGINT,
    files        JSON,
    committed_at TIMESTAMP
);

-- Stores made before this column existed get it here (their steps all wrote edges).
-- keeps_ids: every output row has its single parent's sample_id (export's placement
-- rows), so the step writes no edges and the lineage walk follows `parents` instead.
ALTER TABLE dm.steps ADD COLUMN IF NOT EXISTS keeps_ids BOOLEAN DEFAULT false;
-- code: {file: hash} of every module and sql/ file the step ran (its fingerprint hashes
-- them), so `datamix plan` can say which file changed.
ALTER TABLE dm.steps ADD COLUMN IF NOT EXISTS code JSON;

-- child (step, sample_id) was made from parent (parent_step, parent_id).
-- Pass-through and keeps_ids steps write no edges: their rows keep their parent's ids.
CREATE TABLE IF NOT EXISTS dm.edges (
    step        VARCHAR,
    sample_id   VARCHAR,
    parent_step VARCHAR,
    parent_id   VARCHAR
);

-- What a step decided about one of its INPUT samples. Filters mark, they do not
-- silently drop: every dropped sample has a row here with the reason.
CREATE TABLE IF NOT EXISTS dm.decisions (
    step       VARCHAR,
    sample_id  VARCHAR,
    kept       BOOLEAN,
    reason     VARCHAR,
    score      DOUBLE,
    related_id VARCHAR         -- the sample it duplicates / the winner it lost to / the reference it matched
);

-- Input rows that could not be read, with where they came from.
CREATE TABLE IF NOT EXISTS dm.quarantine (
    step   VARCHAR,
    file   VARCHAR,
    line   BIGINT,
    reason VARCHAR,
    raw    VARCHAR
);

-- Model responses keyed by (model, prompt, sampling params, seed, sample index).
CREATE TABLE IF NOT EXISTS dm.cache (
    key        VARCHAR PRIMARY KEY,
    value      JSON,           -- JSON-able values (model responses)
    blob       BLOB,           -- binary values (MinHash signatures)
    created_at TIMESTAMP DEFAULT current_timestamp
);
