-- Evaluation results: one row per (evaluate step, model, set, metric) value.
-- Written by the runner from an evaluate step's chunks (steps/evaluate.py), one chunk
-- per model, in the chunk's transaction; a step whose fingerprint changes loses its rows
-- with the rest of its output (Store.reset_step).
-- Inputs: none (a table). Grain: step x model x set x metric.
-- value: the metric (nll in nats per assistant token, bpb in bits per byte, accuracies
-- and win rates in [0, 1]); n: the examples it is over (chats, questions, prompts);
-- stderr: its standard error; ci_low/ci_high: a 95% interval; higher_is_better: which
-- direction is an improvement (nll and bpb: lower is better).
CREATE TABLE IF NOT EXISTS dm.metrics (
    run_id           VARCHAR,
    step             VARCHAR,   -- the evaluate step
    model            VARCHAR,   -- a model under `models:` or a train step
    model_path       VARCHAR,   -- the folder that was evaluated
    "set"            VARCHAR,   -- the set's name in the step
    role             VARCHAR,   -- general | domain | NULL (which side of dm.forgetting's ledger)
    metric           VARCHAR,
    value            DOUBLE,
    n                BIGINT,
    stderr           DOUBLE,
    ci_low           DOUBLE,
    ci_high          DOUBLE,
    higher_is_better BOOLEAN,
    created_at       TIMESTAMP
);
