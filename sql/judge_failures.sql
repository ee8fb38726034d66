-- Scores a judge step could not use, per judge: replies whose score could not be parsed
-- (structured JSON or free text), was out of the scale or on another scale.
-- Inputs: a judge step's table (column scores: list of struct{judge, score, reason}).
-- Outputs: judge, candidates, failures, failure_rate, reasons (reason kind -> count).
-- Grain: one row per judge.
CREATE OR REPLACE MACRO dm.judge_failures(judge_step) AS TABLE
WITH per_score AS (
    SELECT s.judge AS judge, s.score AS score, split_part(s.reason, ':', 1) AS reason
    FROM (SELECT unnest(scores) AS s FROM query_table(judge_step))
), per_reason AS (
    SELECT judge, reason, count(*) AS n FROM per_score WHERE reason IS NOT NULL GROUP BY judge, reason
)
SELECT p.judge,
       count(*) AS candidates,
       count(*) FILTER (WHERE p.score IS NULL) AS failures,
       round(count(*) FILTER (WHERE p.score IS NULL) / count(*), 4) AS failure_rate,
       any_value(r.reasons) AS reasons
FROM per_score p
LEFT JOIN (SELECT judge, map_from_entries(list({'k': reason, 'v': n} ORDER BY reason)) AS reasons
           FROM per_reason GROUP BY judge) r USING (judge)
GROUP BY p.judge ORDER BY p.judge;
