-- Duplicate clusters: for every dedup step, each kept sample and how many samples
-- it stands for (itself plus those removed as its duplicates).
-- Inputs: dm.decisions (rows with related_id set by dedup steps), dm.steps.
-- Grain: one row per (step, kept sample).
CREATE OR REPLACE VIEW dm.clusters AS
SELECT d.step, d.related_id AS kept_id, count(*) + 1 AS cluster_size,
       round(min(d.score), 4) AS min_similarity
FROM dm.decisions d JOIN dm.steps s ON s.name = d.step AND s.kind = 'dedup'
WHERE NOT d.kept AND d.reason IN ('duplicate', 'near_duplicate', 'semantic_duplicate')
GROUP BY ALL
ORDER BY cluster_size DESC, d.step, kept_id;
