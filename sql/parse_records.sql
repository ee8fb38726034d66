-- Parse raw input lines for sql/normalize_records.sql (its `fields` query).
-- Input: _records(origin_line BIGINT, raw VARCHAR, decode_error VARCHAR); parameter
--   $origin_file, $structure (see normalize_records.sql).
-- Output: origin_file, origin_line, raw, decode_error, f (the parsed record, NULL when the
--   line is not a JSON object), one row per non-blank line, in input order.
-- Cost: each record is parsed once (json_transform, under try() so that invalid JSON
-- gives NULL instead of an error). Valid JSON is an object exactly when its first
-- character after JSON whitespace is '{' (json_transform would give any other value an
-- all-NULL struct); missing keys and mistyped values come back NULL.
SELECT *, CASE WHEN decode_error IS NULL
                AND (starts_with(raw, '{') OR starts_with(ltrim(raw, chr(32) || chr(9) || chr(10) || chr(13)), '{'))
               THEN try(json_transform(raw, $structure)) END AS f
FROM (
    SELECT $origin_file::VARCHAR AS origin_file, origin_line, raw, decode_error
    FROM _records
    -- blank lines are not records. trim() strips exactly the Unicode space separators
    -- (Zs), so "no character outside Zs" is the same test without trimming every line.
    WHERE regexp_matches(raw, '[^\p{Zs}]')
)
