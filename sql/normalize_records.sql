-- Normalise raw input records to OpenAI-style `messages`, with a quarantine reason
-- for every row that cannot be used.
-- Inputs: _records(origin_file VARCHAR, origin_line BIGINT, raw VARCHAR, decode_error VARCHAR);
--   parameters $shape ('auto' or a shape name), $prompt_name, $response_name; placeholders
--   filled in by steps/load.py:
--   @structure@ (the json_transform structure: every key any shape reads, parsed once),
--   @prompt@, @response@, @system@ (quoted field identifiers), @keep@ (extra columns).
-- Output grain: one row per non-blank input record: origin_file, origin_line, messages,
--   reason (NULL for good rows), raw, and the kept fields.
-- Shapes: messages (OpenAI), sharegpt (conversations with from/value), alpaca
-- (instruction/input/output), prompt_response (named fields).
WITH parsed AS (
    SELECT origin_file, origin_line, raw, decode_error,
           decode_error IS NULL AND json_valid(raw) AS valid
    FROM _records
    -- blank lines are not records (the cheap prefix test spares a trim of every line)
    WHERE NOT (ltrim(raw[:64]) = '' AND trim(raw) = '')
), fields AS (
    -- one JSON parse per record: missing keys and mistyped values come back NULL
    SELECT *, CASE WHEN valid AND json_type(raw) = 'OBJECT' THEN json_transform(raw, @structure@) END AS f
    FROM parsed
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
)
SELECT origin_file, origin_line, messages, raw@keep@,
       CASE
           WHEN decode_error IS NOT NULL THEN decode_error
           WHEN NOT valid THEN 'invalid JSON'
           WHEN f IS NULL THEN 'not a JSON object'
           -- the key is there but its value has the wrong type: say which
           WHEN shape IS NULL AND json_exists(raw, '$.messages') THEN 'messages is not a list of {role, content}'
           WHEN shape IS NULL AND json_exists(raw, '$.conversations') THEN 'conversations is not a list of {from, value}'
           WHEN shape IS NULL THEN 'missing fields: expected messages, conversations, instruction/output, or '
                                   || $prompt_name || '/' || $response_name
           WHEN shape = 'messages' AND messages IS NULL THEN 'messages is not a list of {role, content}'
           WHEN shape = 'sharegpt' AND messages IS NULL THEN 'conversations is not a list of {from, value}'
           WHEN shape = 'alpaca' AND messages IS NULL THEN 'missing field: output'
           WHEN shape = 'prompt_response' AND messages IS NULL THEN 'missing field: ' || $response_name
           WHEN len(messages) = 0 THEN 'no messages'
           WHEN list_bool_or(list_transform(messages, lambda m: m.role IS NULL OR m.role NOT IN ('system', 'user', 'assistant', 'tool')))
               THEN 'unknown role: ' || coalesce(list_filter(messages, lambda m: m.role IS NULL
                        OR m.role NOT IN ('system', 'user', 'assistant', 'tool'))[1].role, 'null')
           WHEN list_bool_or(list_transform(messages, lambda m: m.content IS NULL OR (ltrim(m.content[:64]) = '' AND trim(m.content) = '')))
               THEN 'empty content in a ' || list_filter(messages, lambda m: m.content IS NULL OR trim(m.content) = '')[1].role || ' message'
       END AS reason
FROM converted
