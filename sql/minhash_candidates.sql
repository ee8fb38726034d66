-- MinHash LSH buckets from band keys on disk (out-of-core dedup, datamix/dedup/ooc.py).
-- Inputs: $files  list of Parquet files of (doc BIGINT, band SMALLINT, key UBIGINT)
--                 (layout: datamix/dedup/bands.py).
-- Output: (band, key, doc), every row, sorted by (band, key, doc): each (band, key) bucket
-- is a run of consecutive rows with its documents ascending, and lsh.sorted_bucket_pairs
-- turns the runs into candidate pairs with the in-memory path's bucket cap.
-- Grain: one row per (document, band).
-- The grouping is DuckDB's external sort, which spills to the connection's temp_directory
-- past its memory_limit. (A GROUP BY band, key with list(doc) did the same grouping 3x
-- slower: it builds a list for every bucket, and most buckets hold one document.)
SELECT band, key, doc
FROM read_parquet($files)
ORDER BY band, key, doc
