-- Queries of `datamix report`: distributions summarised in the store, so a report of a
-- million samples reads a few hundred numbers. `{values}` is one of the report's own
-- queries yielding (grp, x) (its parameters come first); nothing from the data is
-- spliced in.

-- name: distribution_stats
-- Grain: one row per group: count, min, 10th/50th/90th percentiles, max, mean of x.
WITH v AS ({values})
SELECT grp, count(x) AS n, min(x) AS min, quantile_cont(x, 0.1) AS p10, median(x) AS p50,
       quantile_cont(x, 0.9) AS p90, max(x) AS max, avg(x) AS mean
FROM v WHERE x IS NOT NULL GROUP BY grp ORDER BY grp;

-- name: distribution_bins
-- Grain: one row per (group, bin) with its count; parameters after the inner query's:
-- low edge, bin width, number of bins (values on the top edge go to the last bin).
WITH v AS ({values})
SELECT grp, least(greatest(floor((x - ?) / ?), 0), ? - 1)::INTEGER AS bin, count(*) AS n
FROM v WHERE x IS NOT NULL GROUP BY ALL ORDER BY grp, bin;
