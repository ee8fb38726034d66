-- Normalise raw input records to OpenAI-style `messages`, with a quarantine reason
-- for every row that cannot be used.
-- Inputs: _records(origin_file VARCHAR, origin_line BIGINT, raw VARCHAR, decode_error VARCHAR),
--   parameters $prompt_field, $response_field, $system_field, $shape ('auto' or a shape name).
-- Output grain: one row per input record: origin_file, origin_line, shape, messages, reason, raw.
-- reason IS NULL for good rows. Shapes: messages (OpenAI), sharegpt (conversations
-- with from/value), alpaca (instruction/input/output), prompt_response (named columns).
WITH parsed AS (
    SELECT origin_file, origin_line, raw, decode_error,
           CASE WHEN decode_error IS NULL AND json_valid(raw) AND json_type(raw) = 'OBJECT'
                THEN raw::JSON END AS j
    FROM _records
), shaped AS (
    SELECT *,
           CASE
               WHEN j IS NULL THEN NULL
               WHEN $shape <> 'auto' THEN $shape
               WHEN json_exists(j, '$.messages') THEN 'messages'
               WHEN json_exists(j, '$.conversations') THEN 'sharegpt'
               WHEN json_exists(j, '$.instruction') THEN 'alpaca'
               WHEN json_exists(j, '$."' || $prompt_field || '"') THEN 'prompt_response'
           END AS shape
    FROM parsed
), converted AS (
    SELECT *,
           CASE shape
               WHEN 'messages' THEN
                   CASE WHEN json_type(j, '$.messages') = 'ARRAY'
                        THEN from_json(j -> '$.messages', '[{"role": "VARCHAR", "content": "VARCHAR"}]') END
               WHEN 'sharegpt' THEN
                   CASE WHEN json_type(j, '$.conversations') = 'ARRAY' THEN
                   list_transform(
                       from_json(j -> '$.conversations', '[{"from": "VARCHAR", "value": "VARCHAR"}]'),
                       lambda m: {'role': CASE lower(m."from")
                                         WHEN 'human' THEN 'user' WHEN 'user' THEN 'user'
                                         WHEN 'gpt' THEN 'assistant' WHEN 'assistant' THEN 'assistant'
                                         WHEN 'chatgpt' THEN 'assistant' WHEN 'bard' THEN 'assistant'
                                         WHEN 'bing' THEN 'assistant' WHEN 'system' THEN 'system'
                                         ELSE m."from" END,
                             'content': m.value}) END
               WHEN 'alpaca' THEN
                   CASE WHEN json_exists(j, '$.output') THEN [
                       {'role': 'user',
                        'content': (j ->> '$.instruction')
                                   || CASE WHEN coalesce(trim(j ->> '$.input'), '') <> ''
                                           THEN chr(10) || chr(10) || (j ->> '$.input') ELSE '' END},
                       {'role': 'assistant', 'content': j ->> '$.output'}] END
               WHEN 'prompt_response' THEN
                   CASE WHEN json_exists(j, '$."' || $response_field || '"') THEN
                   list_concat(
                       CASE WHEN coalesce(j ->> ('$."' || $system_field || '"'), '') <> ''
                            THEN [{'role': 'system', 'content': j ->> ('$."' || $system_field || '"')}]
                            ELSE [] END,
                       [{'role': 'user', 'content': j ->> ('$."' || $prompt_field || '"')},
                        {'role': 'assistant', 'content': j ->> ('$."' || $response_field || '"')}]) END
           END AS messages
    FROM shaped
)
SELECT origin_file, origin_line, shape, messages, raw,
       CASE
           WHEN decode_error IS NOT NULL THEN decode_error
           WHEN NOT json_valid(raw) THEN 'invalid JSON'
           WHEN j IS NULL THEN 'not a JSON object'
           WHEN shape IS NULL THEN 'missing fields: expected messages, conversations, instruction/output, or '
                                   || $prompt_field || '/' || $response_field
           WHEN shape = 'messages' AND messages IS NULL THEN 'messages is not a list of {role, content}'
           WHEN shape = 'sharegpt' AND messages IS NULL THEN 'conversations is not a list of {from, value}'
           WHEN shape = 'alpaca' AND messages IS NULL THEN 'missing field: output'
           WHEN shape = 'prompt_response' AND messages IS NULL THEN 'missing field: ' || $response_field
           WHEN len(messages) = 0 THEN 'no messages'
           WHEN len(list_filter(messages, lambda m: m.role IS NULL OR m.role NOT IN ('system', 'user', 'assistant', 'tool'))) > 0
               THEN 'unknown role: ' || coalesce(list_filter(messages, lambda m: m.role IS NULL
                        OR m.role NOT IN ('system', 'user', 'assistant', 'tool'))[1].role, 'null')
           WHEN len(list_filter(messages, lambda m: m.content IS NULL OR trim(m.content) = '')) > 0
               THEN 'empty content in a ' || list_filter(messages, lambda m: m.content IS NULL OR trim(m.content) = '')[1].role || ' message'
       END AS reason
FROM converted
