
INSERT INTO conversations AS c
    (id, continuation_id, session_id, message_count, last_message_at, total_tokens)
VALUES ($3, $2, $1, $4, $6, $5)
ON CONFLICT (session_id, continuation_id) DO UPDATE
SET message_count = c.message_count + $4, total_tokens = c.total_tokens + $5, last_message_at = greatest(c.last_message_at, $6::timestamptz),
    updated_at = now()
RETURNING c.id AS c_id, c.continuation_id AS c_continuation_id, c.session_id AS c_session_id, c.title AS c_title, c.metadata AS c_metadata, CASE WHEN c.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.created_at END AS c_created_at, CASE WHEN c.updated_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.updated_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.updated_at END AS c_updated_at, c.message_count AS c_message_count, CASE WHEN c.last_message_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.last_message_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.last_message_at END AS c_last_message_at, c.total_tokens AS c_total_tokens, c.forked_from AS c_forked_from, c.forked_at_seq AS c_forked_at_seq, c.compacted_through AS c_compacted_through

