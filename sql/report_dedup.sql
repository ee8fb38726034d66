-- Queries of `datamix report`: near-duplicate clusters and decontamination.

-- name: cluster_sizes
-- Inputs: dm.clusters (sql/clusters.sql). Grain: one row per (dedup step, cluster size)
-- with how many clusters have that size (a kept sample and the samples removed as its copies).
SELECT step, cluster_size, count(*) AS clusters
FROM dm.clusters GROUP BY ALL ORDER BY step, cluster_size;

-- name: duplicate_pairs
-- Inputs: dm.decisions of dedup steps. Grain: up to ? (parameter 1) removed samples per
-- (step, reason), the most similar first: the removed id, the id it duplicates (or the
-- reference row it matched) and the similarity.
SELECT step, reason, sample_id, related_id, score AS similarity
FROM (SELECT d.*, row_number() OVER (PARTITION BY d.step, d.reason ORDER BY d.score DESC NULLS LAST, d.sample_id) AS k
      FROM dm.decisions d JOIN dm.steps s ON s.name = d.step AND s.kind = 'dedup'
      WHERE NOT d.kept)
WHERE k <= ?
ORDER BY step, reason, similarity DESC NULLS LAST;

-- name: dedup_totals
-- Inputs: dm.decisions of dedup steps. Grain: one row per (step, reason): removed samples
-- and their similarity range.
SELECT d.step, coalesce(d.reason, 'dropped') AS reason, count(*) AS removed,
       min(d.score) AS min_similarity, max(d.score) AS max_similarity
FROM dm.decisions d JOIN dm.steps s ON s.name = d.step AND s.kind = 'dedup'
WHERE NOT d.kept GROUP BY ALL ORDER BY d.step, removed DESC;
