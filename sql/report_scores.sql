-- Queries of `datamix report`: judge scores, agreement, kept against lost.

-- name: judge_scores
-- Inputs: a judge step's table (parameter 1): `scores` holds one struct per judge.
-- Grain: one row per (candidate, judge) with a parsed score.
SELECT s.judge AS grp, s.score AS x
FROM (SELECT unnest(scores) AS s FROM query_table(?))
WHERE s.score IS NOT NULL;

-- name: model_scores
-- Inputs: a judge step's table (parameter 1). Grain: one row per candidate with a score:
-- its generating model and the aggregated score.
SELECT coalesce(model, '(none)') AS grp, score AS x FROM query_table(?) WHERE score IS NOT NULL;

-- name: judge_agreement
-- Inputs: a judge step's table (parameter 1). Grain: one row per pair of judges: the
-- Pearson correlation of their scores over the candidates both scored.
WITH s AS (SELECT sample_id, unnest(scores) AS j FROM query_table(?))
SELECT a.j.judge AS judge_a, b.j.judge AS judge_b, count(*) AS candidates,
       corr(a.j.score, b.j.score) AS correlation
FROM s a JOIN s b ON a.sample_id = b.sample_id AND a.j.judge < b.j.judge
WHERE a.j.score IS NOT NULL AND b.j.score IS NOT NULL
GROUP BY ALL ORDER BY judge_a, judge_b;

-- name: kept_vs_lost
-- Inputs: dm.decisions of select steps. Grain: one row per decided candidate with a score.
SELECT d.step, CASE WHEN d.kept THEN 'kept' ELSE coalesce(d.reason, 'dropped') END AS grp, d.score AS x
FROM dm.decisions d JOIN dm.steps s ON s.name = d.step AND s.kind = 'select'
WHERE d.score IS NOT NULL;
