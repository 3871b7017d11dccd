
WITH stored AS (SELECT m.id AS s_id, m.conversation_id AS s_conversation_id, m.seq AS s_seq, m.role AS s_role, m.content AS s_content, m.metadata AS s_metadata, m.tokens AS s_tokens, CASE WHEN m.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN m.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE m.created_at END AS s_created_at, m.covers_through AS s_covers_through, m.content_sealed AS s_content_sealed, m.metadata_sealed AS s_metadata_sealed FROM messages m WHERE m.id = $2::uuid AND m.session_id = $11::uuid),
ok AS (
    SELECT id FROM conversations
    WHERE id = $1 AND session_id = $11::uuid AND NOT EXISTS (SELECT 1 FROM stored)
      AND $3 >= coalesce(compacted_through, 0) AND $3 <= message_count
),
doomed AS (  -- what a deleting compaction removes: what it covers, and older summaries
    SELECT id, tokens FROM messages
    WHERE $8 AND conversation_id = $1 AND session_id = $11::uuid AND EXISTS (SELECT 1 FROM ok)
      AND (seq <= $3 OR covers_through IS NOT NULL)
),
gone AS (DELETE FROM messages WHERE id IN (SELECT id FROM doomed) AND session_id = $11::uuid),
conv AS (
    UPDATE conversations c SET message_count = c.message_count + 1, total_tokens = c.total_tokens + coalesce($7::integer, 0) - (SELECT coalesce(sum(tokens), 0) FROM doomed), last_message_at = greatest(c.last_message_at, now()), compacted_through = $3, updated_at = now()
    FROM ok WHERE c.id = ok.id AND c.session_id = $11::uuid
    RETURNING c.message_count
),
ins AS (
    INSERT INTO messages (session_id, id, conversation_id, seq, role, content, metadata, tokens,
                          covers_through, content_sealed, metadata_sealed)
    SELECT $11::uuid, $2::uuid, $1,
           conv.message_count - 1 + 1, $4::message_role, $5,
           coalesce($6::jsonb, '{}'::jsonb), $7::integer, $3, $9::bytea, $10::bytea
    FROM conv
    RETURNING id AS m_id, conversation_id AS m_conversation_id, seq AS m_seq, role AS m_role, content AS m_content, metadata AS m_metadata, tokens AS m_tokens, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS m_created_at, covers_through AS m_covers_through, content_sealed AS m_content_sealed, metadata_sealed AS m_metadata_sealed
)
SELECT * FROM (SELECT 1) one LEFT JOIN ins ON true LEFT JOIN stored ON true

