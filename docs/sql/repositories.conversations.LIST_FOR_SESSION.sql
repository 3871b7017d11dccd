
SELECT c.* FROM sessions s
LEFT JOIN LATERAL (
    SELECT id AS id, continuation_id AS continuation_id, session_id AS session_id, title AS title, metadata AS metadata, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS created_at, CASE WHEN updated_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN updated_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE updated_at END AS updated_at, message_count AS message_count, CASE WHEN last_message_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN last_message_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE last_message_at END AS last_message_at, total_tokens AS total_tokens, forked_from AS forked_from, forked_at_seq AS forked_at_seq, compacted_through AS compacted_through FROM conversations
    WHERE session_id = s.id
      AND ($2::timestamptz IS NULL OR (conversations.created_at, conversations.id) < ($2, $3::uuid) AND NOT ($2 = '0001-01-01 00:00:00.000001+00:00'::timestamptz AND conversations.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz AND conversations.id >= $3::uuid))
    -- qualified: a bare name would sort by the select list's (clamped) created_at
    ORDER BY conversations.created_at DESC, conversations.id DESC
    LIMIT $4
) c ON true
WHERE s.id = $1
ORDER BY c.created_at DESC, c.id DESC

