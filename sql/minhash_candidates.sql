-- MinHash LSH buckets from band keys on disk (out-of-core dedup, datamix/dedup/ooc.py).
-- Inputs: $files  list of Parquet files of (doc BIGINT, band SMALLINT, key UBIGINT)
--                 (layout: datamix/dedup/bands.py).
-- Output: docs BIGINT[]: the documents of one (band, key) bucket in ascending order.
-- Grain: one row per bucket of two or more documents (a document alone in its bucket
-- has no candidate there). lsh.bucket_pairs turns the lists into candidate pairs with
-- the in-memory path's bucket cap (pairs generated in SQL with unnest took twice as long).
-- The GROUP BY spills to the connection's temp_directory past its memory_limit.
SELECT list(doc ORDER BY doc) AS docs
FROM read_parquet($files)
GROUP BY band, key
HAVING count(*) > 1
