-- Queries of `datamix report`: length distributions of instructions and responses.
-- A step's table (parameter 1, through query_table) is read with a grouping column
-- that is always `source` (mix) or `model` (generate, judge, ...): the report picks
-- the query by the column the table has.

-- name: lengths_by_source
-- Inputs: a mix step's table. Grain: one row per sample: its source, the characters of
-- its first user turn and last assistant turn, and its estimated tokens (mix's est_tokens).
SELECT source AS grp,
       length(list_filter(messages, lambda m: m.role = 'user')[1].content) AS instruction_chars,
       length(CASE WHEN messages[-1].role = 'assistant' THEN messages[-1].content END) AS response_chars,
       est_tokens AS tokens
FROM query_table(?);

-- name: lengths_by_model
-- Inputs: a step's table with a `model` column and tokens_out (the generating model's
-- own count of the response's tokens). Grain: one row per sample.
SELECT model AS grp,
       length(list_filter(messages, lambda m: m.role = 'user')[1].content) AS instruction_chars,
       length(CASE WHEN messages[-1].role = 'assistant' THEN messages[-1].content END) AS response_chars,
       tokens_out AS tokens
FROM query_table(?);
