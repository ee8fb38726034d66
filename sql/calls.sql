-- Cost accounting: what every model call of every step cost.
-- Inputs: written by the runner from the shared generation path
-- (datamix.steps.generate.generate_cached), outside the chunk transactions, so a
-- call that was paid for is counted even when its chunk never commits.
-- Grain: one row per backend call (a batch of prompts sent to one model, cached =
-- false) and one row per batch of requests the response cache answered (cached = true;
-- its tokens are what the cache saved, taken from the cached responses).
CREATE TABLE IF NOT EXISTS dm.calls (
    run_id            VARCHAR,
    step              VARCHAR,
    model             VARCHAR,      -- the name under `models:`
    cached            BOOLEAN,
    prompts           BIGINT,       -- prompts in the batch
    completions       BIGINT,       -- completions requested (prompts x samples)
    prompt_tokens     BIGINT,       -- one prompt's tokens per prompt (the server bills a prompt once per request)
    completion_tokens BIGINT,
    latency_s         DOUBLE,       -- wall time of the backend call (0 for cache hits)
    retries           BIGINT,       -- retried attempts the backend reported (openai: 429, 5xx, timeouts)
    failed            BIGINT,       -- completions that failed for good (the backend raised)
    price_input_per_m DOUBLE,       -- the model's `price:` when the call was made (NULL: no price given)
    price_output_per_m DOUBLE,
    called_at         TIMESTAMP DEFAULT current_timestamp
);

-- Cost per step and model, the cost section of `datamix report` and the question
-- "what did it cost". usd counts only calls made (cache hits cost nothing; saved_usd
-- is what they would have cost). Grain: one row per (step, model).
CREATE OR REPLACE VIEW dm.cost AS
SELECT step, model,
       coalesce(sum(completions) FILTER (WHERE NOT cached), 0) AS calls,
       coalesce(sum(completions) FILTER (WHERE cached), 0) AS cache_hits,
       coalesce(sum(prompt_tokens) FILTER (WHERE NOT cached), 0) AS prompt_tokens,
       coalesce(sum(completion_tokens) FILTER (WHERE NOT cached), 0) AS completion_tokens,
       coalesce(sum(retries), 0) AS retries,
       coalesce(sum(failed), 0) AS failed,
       round(coalesce(sum(latency_s), 0), 3) AS seconds,
       sum((prompt_tokens * price_input_per_m + completion_tokens * price_output_per_m) / 1e6)
           FILTER (WHERE NOT cached) AS usd,
       sum((prompt_tokens * price_input_per_m + completion_tokens * price_output_per_m) / 1e6)
           FILTER (WHERE cached) AS saved_usd
FROM dm.calls
GROUP BY step, model
ORDER BY min(called_at), step, model;
