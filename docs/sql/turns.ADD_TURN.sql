
WITH stored AS (  -- the same message id already written: a resend after a timeout
    SELECT m.id AS m_id, m.conversation_id AS m_conversation_id, m.seq AS m_seq, m.role AS m_role, m.content AS m_content, m.metadata AS m_metadata, m.tokens AS m_tokens, CASE WHEN m.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN m.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE m.created_at END AS m_created_at, m.covers_through AS m_covers_through, m.content_sealed AS m_content_sealed, m.metadata_sealed AS m_metadata_sealed, c.continuation_id AS stored_in
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
    WHERE m.id = $8::uuid
),
live AS (
    SELECT id FROM sessions
    WHERE id = $2 AND status = 'active' AND (expires_at IS NULL OR expires_at > now()) AND NOT EXISTS (SELECT 1 FROM stored)
    FOR UPDATE
),
gate AS (
    SELECT 1 WHERE $2::uuid IS NULL AND NOT EXISTS (SELECT 1 FROM stored)
    UNION ALL
    SELECT 1 FROM live
),
conv AS (
    INSERT INTO conversations AS c
        (continuation_id, session_id, message_count, last_message_at, total_tokens)
    SELECT $1, $2::uuid, 1, now(), coalesce($6::integer, 0) FROM gate
    ON CONFLICT (continuation_id) DO UPDATE
    SET session_id = coalesce(c.session_id, EXCLUDED.session_id),
        message_count = c.message_count + 1, total_tokens = c.total_tokens + coalesce($6::integer, 0), last_message_at = greatest(c.last_message_at, now())
    WHERE (c.session_id IS NULL OR EXCLUDED.session_id IS NULL OR c.session_id = EXCLUDED.session_id)
    RETURNING c.id AS c_id, c.continuation_id AS c_continuation_id, c.session_id AS c_session_id, c.title AS c_title, c.metadata AS c_metadata, CASE WHEN c.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.created_at END AS c_created_at, CASE WHEN c.updated_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.updated_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.updated_at END AS c_updated_at, c.message_count AS c_message_count, CASE WHEN c.last_message_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.last_message_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.last_message_at END AS c_last_message_at, c.total_tokens AS c_total_tokens, c.forked_from AS c_forked_from, c.forked_at_seq AS c_forked_at_seq, c.compacted_through AS c_compacted_through
),
sess AS (
    UPDATE sessions SET turn_count = turn_count + 1, total_tokens = total_tokens + coalesce($6::integer, 0), expires_at = CASE WHEN $7::interval IS NOT NULL AND expires_at IS NOT NULL THEN greatest(expires_at, now() + $7::interval) ELSE expires_at END
    WHERE id = (SELECT id FROM live) AND EXISTS (SELECT 1 FROM conv)
    RETURNING id AS s_id, user_id AS s_user_id, title AS s_title, CASE WHEN status IN ('active', 'paused') AND expires_at <= now() THEN 'expired' ELSE status END AS s_status, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS s_created_at, CASE WHEN updated_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN updated_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE updated_at END AS s_updated_at, CASE WHEN expires_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN expires_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE expires_at END AS s_expires_at, metadata AS s_metadata, turn_count AS s_turn_count, total_tokens AS s_total_tokens, version AS s_version
),
msg AS (
    INSERT INTO messages (id, conversation_id, seq, role, content, metadata, tokens,
                          content_sealed, metadata_sealed)
    SELECT coalesce($8::uuid, gen_random_uuid()), conv.c_id,
           conv.c_message_count - 1 + 1,
           $3::message_role, $4, coalesce($5::jsonb, '{}'::jsonb), $6::integer,
           $9::bytea, $10::bytea
    FROM conv
    RETURNING id AS m_id, conversation_id AS m_conversation_id, seq AS m_seq, role AS m_role, content AS m_content, metadata AS m_metadata, tokens AS m_tokens, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS m_created_at, covers_through AS m_covers_through, content_sealed AS m_content_sealed, metadata_sealed AS m_metadata_sealed
)
SELECT msg.*, conv.*, sess.*, NULL::text AS stored_in, false AS touched
FROM msg CROSS JOIN conv LEFT JOIN sess ON true
UNION ALL
SELECT stored.m_id, stored.m_conversation_id, stored.m_seq, stored.m_role, stored.m_content, stored.m_metadata, stored.m_tokens, stored.m_created_at, stored.m_covers_through, stored.m_content_sealed, stored.m_metadata_sealed,
       c.id AS c_id, c.continuation_id AS c_continuation_id, c.session_id AS c_session_id, c.title AS c_title, c.metadata AS c_metadata, CASE WHEN c.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.created_at END AS c_created_at, CASE WHEN c.updated_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.updated_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.updated_at END AS c_updated_at, c.message_count AS c_message_count, CASE WHEN c.last_message_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.last_message_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.last_message_at END AS c_last_message_at, c.total_tokens AS c_total_tokens, c.forked_from AS c_forked_from, c.forked_at_seq AS c_forked_at_seq, c.compacted_through AS c_compacted_through,
       s.id AS s_id, s.user_id AS s_user_id, s.title AS s_title, CASE WHEN s.status IN ('active', 'paused') AND s.expires_at <= now() THEN 'expired' ELSE s.status END AS s_status, CASE WHEN s.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN s.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE s.created_at END AS s_created_at, CASE WHEN s.updated_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN s.updated_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE s.updated_at END AS s_updated_at, CASE WHEN s.expires_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN s.expires_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE s.expires_at END AS s_expires_at, s.metadata AS s_metadata, s.turn_count AS s_turn_count, s.total_tokens AS s_total_tokens, s.version AS s_version, stored.stored_in, false
FROM stored
JOIN conversations c ON c.id = stored.m_conversation_id
LEFT JOIN sessions s ON s.id = $2

