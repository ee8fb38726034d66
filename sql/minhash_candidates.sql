-- MinHash LSH candidate pairs from band keys on disk (out-of-core dedup, datamix/dedup/ooc.py).
-- Inputs: $files  list of Parquet files of (doc BIGINT, band SMALLINT, key UBIGINT)
--                 (layout: datamix/dedup/bands.py);
--         $max_bucket  bucket-size cap, as lsh.candidate_pairs.
-- Output: (a, b) BIGINT with a < b, each candidate pair once (unordered).
-- Grain: documents sharing a (band, key) bucket: every pair of a bucket of at most
-- $max_bucket members; in a larger one only a star from its lowest document plus the
-- chain of neighbours in document order (what the in-memory path emits).
-- The GROUP BY and DISTINCT spill to the connection's temp_directory past memory_limit.
WITH buckets AS (
    SELECT list(doc ORDER BY doc) AS d, count(*) AS m
    FROM read_parquet($files)
    GROUP BY band, key
    HAVING count(*) > 1
)
SELECT DISTINCT a, b FROM (
    SELECT d[i] AS a, unnest(d[i + 1:]) AS b
    FROM (SELECT d, unnest(range(1, m)) AS i FROM buckets WHERE m <= $max_bucket)
    UNION ALL
    SELECT d[1] AS a, unnest(d[2:]) AS b FROM buckets WHERE m > $max_bucket
    UNION ALL
    SELECT d[i - 1] AS a, d[i] AS b
    FROM (SELECT d, unnest(range(3, m + 1)) AS i FROM buckets WHERE m > $max_bucket)
)
