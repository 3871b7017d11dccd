
INSERT INTO conversations AS c (continuation_id, session_id, title, metadata, message_count,
                                total_tokens, last_message_at, forked_from, forked_at_seq,
                                compacted_through)
SELECT $2, $3::uuid, src.title, src.metadata, $4, coalesce(p.tokens, 0), p.last_at, src.id, $4,
       (SELECT s.through FROM (SELECT s.id, s.covers_through AS through FROM messages s
    WHERE s.conversation_id = src.id
      AND s.covers_through IS NOT NULL AND s.seq < $4 + 1
    ORDER BY s.seq DESC LIMIT 1) s)
FROM conversations src,
     LATERAL (SELECT sum(tokens) AS tokens, max(created_at) AS last_at FROM messages
              WHERE conversation_id = src.id AND seq <= $4) p
WHERE src.id = $1
ON CONFLICT (continuation_id) DO NOTHING
RETURNING c.id AS id, c.continuation_id AS continuation_id, c.session_id AS session_id, c.title AS title, c.metadata AS metadata, CASE WHEN c.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.created_at END AS created_at, CASE WHEN c.updated_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.updated_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.updated_at END AS updated_at, c.message_count AS message_count, CASE WHEN c.last_message_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.last_message_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.last_message_at END AS last_message_at, c.total_tokens AS total_tokens, c.forked_from AS forked_from, c.forked_at_seq AS forked_at_seq, c.compacted_through AS compacted_through
