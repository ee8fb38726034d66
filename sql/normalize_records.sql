-- Normalise parsed input records to OpenAI-style `messages`, with a quarantine reason
-- for every row that cannot be used.
-- Input: the `fields` query (a placeholder filled in by steps/load.py), giving
--   (origin_file, origin_line, raw, decode_error, f) with f
--   the record parsed to @structure@: sql/parse_records.sql over raw lines, or the rows
--   of DuckDB's JSON reader for a clean file (raw NULL: such a file has no bad rows, and
--   steps/load.py reads it again line by line if one turns up).
-- Parameters: $origin_file (the file's path as recorded in origin_file), $step (the
--   step name, for sample ids), $shape ('auto' or a shape name), $prompt_name,
--   $response_name, $system_name (the record keys), $structure (the json_transform
--   structure: every key any shape reads, parsed once; used by parse_records.sql);
--   placeholders (names between @ signs) filled in by steps/load.py: fields (the input
--   query), prompt, response, system (quoted field identifiers), keep (extra columns).
-- Output grain: one row per non-blank input record, in input order: sample_id (the id
--   datamix.ids.mint($step, origin_file, origin_line) gives), messages, origin_file,
--   origin_line, the kept fields, reason (NULL for good rows) and raw (NULL for good rows:
--   only quarantine needs it).
-- Shapes: messages (OpenAI), sharegpt (conversations with from/value), alpaca
-- (instruction/input/output), prompt_response (named fields).
-- Values that are not strings: the structure reads every text field as VARCHAR, which
--   turns a number, boolean, object or list into its JSON text (5 -> '5'). Such a row must
--   be quarantined, not loaded as text. `suspect` marks the rows where some text field
--   the shape uses could be such a text (all digits, true/false, {...} or [...]); only
--   those are checked against the raw record's JSON types. A record parsed by DuckDB's
--   reader has no raw text: a suspect one gets the reason 'recheck' and steps/load.py
--   reads the file again line by line.
-- Cost: the checks that name what is wrong run only for the rows that fail (a CASE
-- evaluates a branch only for the rows that reach it).
WITH fields AS (
    @fields@
), shaped AS (
    SELECT *,
           CASE
               WHEN f IS NULL THEN NULL
               WHEN $shape <> 'auto' THEN $shape
               WHEN f.messages IS NOT NULL THEN 'messages'
               WHEN f.conversations IS NOT NULL THEN 'sharegpt'
               WHEN f.instruction IS NOT NULL THEN 'alpaca'
               WHEN f.@prompt@ IS NOT NULL THEN 'prompt_response'
           END AS shape
    FROM fields
), converted AS (
    SELECT *,
           CASE shape
               WHEN 'messages' THEN f.messages
               WHEN 'sharegpt' THEN list_transform(
                   f.conversations,
                   lambda m: {'role': CASE lower(m."from")
                                          WHEN 'human' THEN 'user' WHEN 'user' THEN 'user'
                                          WHEN 'gpt' THEN 'assistant' WHEN 'assistant' THEN 'assistant'
                                          WHEN 'chatgpt' THEN 'assistant' WHEN 'bard' THEN 'assistant'
                                          WHEN 'bing' THEN 'assistant' WHEN 'system' THEN 'system'
                                          ELSE m."from" END,
                              'content': m.value})
               WHEN 'alpaca' THEN
                   CASE WHEN f.output IS NOT NULL THEN [
                       {'role': 'user',
                        'content': f.instruction || CASE WHEN coalesce(trim(f.input), '') <> ''
                                                         THEN chr(10) || chr(10) || f.input ELSE '' END},
                       {'role': 'assistant', 'content': f.output}] END
               WHEN 'prompt_response' THEN
                   CASE WHEN f.@response@ IS NOT NULL THEN list_concat(
                       CASE WHEN coalesce(f.@system@, '') <> ''
                            THEN [{'role': 'system', 'content': f.@system@}] ELSE [] END,
                       [{'role': 'user', 'content': f.@prompt@},
                        {'role': 'assistant', 'content': f.@response@}]) END
           END AS messages
    FROM shaped
), suspected AS (
    -- a text field whose value may be the JSON text of a non-string (see the header)
    SELECT *,
           coalesce(CASE shape
               WHEN 'messages' THEN list_bool_or(list_transform(f.messages, lambda m:
                   regexp_matches(m.role, '^(?s:[-0-9][-+.0-9eE]*|true|false|[\[{].*[\]}])$')
                   OR regexp_matches(m.content, '^(?s:[-0-9][-+.0-9eE]*|true|false|[\[{].*[\]}])$')))
               WHEN 'sharegpt' THEN list_bool_or(list_transform(f.conversations, lambda m:
                   regexp_matches(m."from", '^(?s:[-0-9][-+.0-9eE]*|true|false|[\[{].*[\]}])$')
                   OR regexp_matches(m.value, '^(?s:[-0-9][-+.0-9eE]*|true|false|[\[{].*[\]}])$')))
               WHEN 'alpaca' THEN list_bool_or(list_transform([f.instruction, f.input, f.output], lambda v:
                   regexp_matches(v, '^(?s:[-0-9][-+.0-9eE]*|true|false|[\[{].*[\]}])$')))
               WHEN 'prompt_response' THEN list_bool_or(list_transform([f.@prompt@, f.@response@, f.@system@], lambda v:
                   regexp_matches(v, '^(?s:[-0-9][-+.0-9eE]*|true|false|[\[{].*[\]}])$')))
           END, false) AS suspect
    FROM converted
), typed AS (
    -- for suspect rows only: the first text field whose JSON value is not a string
    SELECT *,
           CASE WHEN suspect AND raw IS NOT NULL THEN list_filter(CASE shape
               WHEN 'messages' THEN flatten(list_transform(json_extract(raw, '$.messages[*]'), lambda m, i: [
                   {'field': 'role of message ' || i, 't': json_type(m -> 'role')},
                   {'field': 'content of message ' || i, 't': json_type(m -> 'content')}]))
               WHEN 'sharegpt' THEN flatten(list_transform(json_extract(raw, '$.conversations[*]'), lambda m, i: [
                   {'field': 'from of turn ' || i, 't': json_type(m -> 'from')},
                   {'field': 'value of turn ' || i, 't': json_type(m -> 'value')}]))
               WHEN 'alpaca' THEN [{'field': 'instruction', 't': json_type(raw -> 'instruction')},
                                   {'field': 'input', 't': json_type(raw -> 'input')},
                                   {'field': 'output', 't': json_type(raw -> 'output')}]
               WHEN 'prompt_response' THEN [{'field': $prompt_name, 't': json_type(raw -> $prompt_name)},
                                            {'field': $response_name, 't': json_type(raw -> $response_name)},
                                            {'field': $system_name, 't': json_type(raw -> $system_name)}]
           END, lambda p: p.t NOT IN ('VARCHAR', 'NULL'))[1] END AS not_text
    FROM suspected
)
, checked AS (
SELECT origin_file, origin_line, messages, raw@keep@,
       CASE
           WHEN decode_error IS NOT NULL THEN decode_error
           WHEN f IS NULL AND NOT json_valid(raw) THEN 'invalid JSON'  -- only failing rows pay this parse
           WHEN f IS NULL THEN 'not a JSON object'
           -- a key given twice parses to one of its values, losing the other without a word
           -- (DuckDB's reader refuses such a file, so only lines read one by one have raw text)
           WHEN raw IS NOT NULL AND len(list_distinct(json_keys(raw))) < len(json_keys(raw))
               THEN 'duplicate key: ' || list_filter(json_keys(raw), lambda k, i: list_position(json_keys(raw), k) < i)[1]
           -- the key is there but its value has the wrong type: say which
           WHEN shape IS NULL AND json_exists(raw, '$.messages') THEN 'messages is not a list of {role, content}'
           WHEN shape IS NULL AND json_exists(raw, '$.conversations') THEN 'conversations is not a list of {from, value}'
           WHEN shape IS NULL THEN 'missing fields: expected messages, conversations, instruction/output, or '
                                   || $prompt_name || '/' || $response_name
           WHEN shape = 'messages' AND messages IS NULL THEN 'messages is not a list of {role, content}'
           WHEN shape = 'sharegpt' AND messages IS NULL THEN 'conversations is not a list of {from, value}'
           WHEN shape = 'alpaca' AND messages IS NULL THEN 'missing field: output'
           WHEN shape = 'prompt_response' AND messages IS NULL THEN 'missing field: ' || $response_name
           WHEN suspect AND raw IS NULL THEN 'recheck'  -- parsed by DuckDB's reader: read again line by line
           WHEN not_text IS NOT NULL THEN not_text.field || ' is '
               || CASE not_text.t WHEN 'BOOLEAN' THEN 'a boolean' WHEN 'OBJECT' THEN 'an object'
                                  WHEN 'ARRAY' THEN 'a list' ELSE 'a number' END
               || ', not a string'
           WHEN len(messages) = 0 THEN 'no messages'
           WHEN list_bool_or(list_transform(messages, lambda m: m.role IS NULL OR m.role NOT IN ('system', 'user', 'assistant', 'tool')))
               THEN 'unknown role: ' || coalesce(list_filter(messages, lambda m: m.role IS NULL
                        OR m.role NOT IN ('system', 'user', 'assistant', 'tool'))[1].role, 'null')
           -- content with no character outside Zs = content that trim() empties (see above)
           WHEN list_bool_or(list_transform(messages, lambda m: m.content IS NULL OR NOT regexp_matches(m.content, '[^\p{Zs}]')))
               THEN 'empty content in a ' || list_filter(messages, lambda m: m.content IS NULL OR trim(m.content) = '')[1].role || ' message'
       END AS reason
FROM typed
)
SELECT substr(md5($step || chr(30) || origin_file || chr(31) || origin_line::VARCHAR), 1, 16) AS sample_id,
       messages, origin_file, origin_line@keep_out@, reason,
       CASE WHEN reason IS NOT NULL THEN raw END AS raw
FROM checked
