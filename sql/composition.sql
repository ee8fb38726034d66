-- Composition of a mix: samples and estimated tokens per source label.
-- Inputs: the mix step's table (column source, est_tokens). Grain: one row per source.
CREATE OR REPLACE MACRO dm.composition(mix_step) AS TABLE
SELECT source,
       count(*) AS samples,
       round(count(*) / sum(count(*)) OVER (), 4) AS sample_fraction,
       sum(est_tokens) AS tokens,
       round(sum(est_tokens) / sum(sum(est_tokens)) OVER (), 4) AS token_fraction
FROM query_table(mix_step)
GROUP BY source ORDER BY source;
