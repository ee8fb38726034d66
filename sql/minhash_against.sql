-- MinHash LSH candidate pairs between documents and reference rows (decontamination,
-- out-of-core; datamix/dedup/ooc.py).
-- Inputs: $docs, $refs  lists of Parquet files of (doc BIGINT, band SMALLINT, key UBIGINT)
--                       (layout: datamix/dedup/bands.py; in $refs `doc` is the reference row);
--         $max_bucket   at most this many reference rows per bucket (the lowest), as
--                       lsh.candidate_pairs_against.
-- Output: (doc, ref) BIGINT, each pair once (unordered).
WITH ref_buckets AS (
    SELECT band, key, list(doc ORDER BY doc)[1:$max_bucket] AS r
    FROM read_parquet($refs)
    GROUP BY band, key
)
SELECT DISTINCT doc, ref FROM (
    SELECT d.doc, unnest(rb.r) AS ref
    FROM read_parquet($docs) d JOIN ref_buckets rb USING (band, key)
)
