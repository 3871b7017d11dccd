
WITH stored AS (  -- the same message id already written: a resend after a timeout
    SELECT m.id AS m_id, m.conversation_id AS m_conversation_id, m.seq AS m_seq, m.role AS m_role, m.content AS m_content, m.metadata AS m_metadata, m.tokens AS m_tokens, CASE WHEN m.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN m.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE m.created_at END AS m_created_at, m.covers_through AS m_covers_through, m.content_sealed AS m_content_sealed, m.metadata_sealed AS m_metadata_sealed, c.continuation_id AS stored_in
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
    WHERE m.id = $8::uuid
),
queued_stored AS (
    SELECT id FROM messages WHERE id = ANY($9::uuid[])
),
queued AS (
    SELECT u.* FROM unnest($9::uuid[], $10::message_role[], $11::text[], $12::jsonb[],
                           $13::integer[], $14::timestamptz[], $15::boolean[],
                           $20::bytea[], $21::bytea[])
        WITH ORDINALITY AS u(id, role, content, metadata, tokens, enqueued_at, counts,
                             content_sealed, metadata_sealed, ord)
    WHERE NOT EXISTS (SELECT 1 FROM queued_stored s WHERE s.id = u.id)
),
q AS (
    SELECT count(*)::integer AS q_n, coalesce(sum(tokens), 0) AS q_tokens,
           count(*) FILTER (WHERE counts)::integer AS q_turns,
           coalesce(sum(tokens) FILTER (WHERE counts), 0) AS q_turn_tokens
    FROM queued
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
    SELECT $1, $2::uuid, 1 + q.q_n, now(), coalesce($6::integer, 0) + q.q_tokens FROM gate CROSS JOIN q
    ON CONFLICT (continuation_id) DO UPDATE
    SET session_id = coalesce(c.session_id, EXCLUDED.session_id),
        message_count = c.message_count + EXCLUDED.message_count, total_tokens = c.total_tokens + EXCLUDED.total_tokens, last_message_at = greatest(c.last_message_at, now())
    WHERE (c.session_id IS NULL OR EXCLUDED.session_id IS NULL OR c.session_id = EXCLUDED.session_id)
    RETURNING c.id AS c_id, c.continuation_id AS c_continuation_id, c.session_id AS c_session_id, c.title AS c_title, c.metadata AS c_metadata, CASE WHEN c.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.created_at END AS c_created_at, CASE WHEN c.updated_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.updated_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.updated_at END AS c_updated_at, c.message_count AS c_message_count, CASE WHEN c.last_message_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN c.last_message_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE c.last_message_at END AS c_last_message_at, c.total_tokens AS c_total_tokens, c.forked_from AS c_forked_from, c.forked_at_seq AS c_forked_at_seq, c.compacted_through AS c_compacted_through
),
sess AS (
    UPDATE sessions SET turn_count = turn_count + 1 + q.q_turns, total_tokens = total_tokens + coalesce($6::integer, 0) + q.q_turn_tokens, expires_at = CASE WHEN $7::interval IS NOT NULL AND expires_at IS NOT NULL THEN greatest(expires_at, now() + $7::interval) ELSE expires_at END FROM q
    WHERE id = (SELECT id FROM live) AND EXISTS (SELECT 1 FROM conv)
    RETURNING id AS s_id, user_id AS s_user_id, title AS s_title, CASE WHEN status IN ('active', 'paused') AND expires_at <= now() THEN 'expired' ELSE status END AS s_status, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS s_created_at, CASE WHEN updated_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN updated_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE updated_at END AS s_updated_at, CASE WHEN expires_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN expires_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE expires_at END AS s_expires_at, metadata AS s_metadata, turn_count AS s_turn_count, total_tokens AS s_total_tokens, version AS s_version
),
earlier AS (  -- the queued messages, before the turn's own, in accept order
    INSERT INTO messages (id, conversation_id, seq, role, content, metadata, tokens, created_at,
                          content_sealed, metadata_sealed)
    SELECT u.id, conv.c_id, conv.c_message_count - (q.q_n + 1) + row_number() OVER (PARTITION BY conv.c_id ORDER BY u.ord), u.role, u.content,
           coalesce(u.metadata, '{}'::jsonb), u.tokens, u.enqueued_at, u.content_sealed,
           u.metadata_sealed
    FROM queued u CROSS JOIN conv CROSS JOIN q
    RETURNING id AS m_id, conversation_id AS m_conversation_id, seq AS m_seq, role AS m_role, content AS m_content, metadata AS m_metadata, tokens AS m_tokens, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS m_created_at, covers_through AS m_covers_through, content_sealed AS m_content_sealed, metadata_sealed AS m_metadata_sealed
),
msg AS (
    INSERT INTO messages (id, conversation_id, seq, role, content, metadata, tokens,
                          content_sealed, metadata_sealed)
    SELECT coalesce($8::uuid, gen_random_uuid()), conv.c_id,
           conv.c_message_count - 1 + 1,
           $3::message_role, $4, coalesce($5::jsonb, '{}'::jsonb), $6::integer,
           $18::bytea, $19::bytea
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

UNION ALL
SELECT e.m_id, e.m_conversation_id, e.m_seq, e.m_role, e.m_content, e.m_metadata, e.m_tokens, e.m_created_at, e.m_covers_through, e.m_content_sealed, e.m_metadata_sealed, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, e.touched
FROM (SELECT m_conversation_id, m_seq, m_tokens, m_content, m_content_sealed FROM msg
  UNION ALL SELECT m_conversation_id, m_seq, m_tokens, m_content, m_content_sealed FROM stored
) AS t
LEFT JOIN LATERAL (
    SELECT s.id, s.covers_through AS through FROM messages s
    WHERE s.conversation_id = t.m_conversation_id
      AND s.covers_through IS NOT NULL AND s.seq < t.m_seq
    ORDER BY s.seq DESC LIMIT 1
) g ON true
CROSS JOIN LATERAL (
    (SELECT b.m_id, b.m_conversation_id, b.m_seq, b.m_role, b.m_content, b.m_metadata, b.m_tokens, b.m_created_at, b.m_covers_through, b.m_content_sealed, b.m_metadata_sealed, b.touched FROM (
        SELECT u.*, sum(coalesce(u.m_tokens, (coalesce(octet_length(u.m_content_sealed) - 45, octet_length(u.m_content)) + 3) / 4)) OVER (
            ORDER BY u.m_seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS running FROM (
            (SELECT e.id AS m_id, e.conversation_id AS m_conversation_id, e.seq AS m_seq, e.role AS m_role, e.content AS m_content, e.metadata AS m_metadata, e.tokens AS m_tokens, CASE WHEN e.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN e.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE e.created_at END AS m_created_at, e.covers_through AS m_covers_through, e.content_sealed AS m_content_sealed, e.metadata_sealed AS m_metadata_sealed, NOT (e.xmax = '0'::xid) AS touched
    FROM messages e
    WHERE e.conversation_id = t.m_conversation_id AND e.seq < t.m_seq AND e.seq > 0
      AND g.id IS NULL
    ORDER BY e.seq DESC
    LIMIT $16)
            UNION ALL
            SELECT earlier.*, NULL::boolean FROM earlier WHERE g.id IS NULL  -- NULL: its own
        ) u
        ORDER BY u.m_seq DESC
        LIMIT $16
    ) b
    WHERE ($17::integer - coalesce(t.m_tokens, (coalesce(octet_length(t.m_content_sealed) - 45, octet_length(t.m_content)) + 3) / 4)) IS NULL OR b.running <= ($17::integer - coalesce(t.m_tokens, (coalesce(octet_length(t.m_content_sealed) - 45, octet_length(t.m_content)) + 3) / 4)))
    UNION ALL
    SELECT v.m_id, v.m_conversation_id, v.m_seq, v.m_role, v.m_content, v.m_metadata, v.m_tokens, v.m_created_at, v.m_covers_through, v.m_content_sealed, v.m_metadata_sealed, v.touched
    FROM (SELECT x.* FROM (SELECT u.*, count(*) OVER w AS k, sum(coalesce(u.m_tokens, (coalesce(octet_length(u.m_content_sealed) - 45, octet_length(u.m_content)) + 3) / 4)) OVER w AS running
    FROM (SELECT (CASE WHEN NULL::integer IS NULL THEN 0 ELSE coalesce((
        SELECT b.seq FROM (
            SELECT seq, sum(coalesce(tokens, (coalesce(octet_length(content_sealed) - 45, octet_length(content)) + 3) / 4)) OVER (
                ORDER BY seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
            ) AS running
            FROM messages
            WHERE conversation_id = t.m_conversation_id AND seq < t.m_seq AND seq > g.through AND covers_through IS NULL
            ORDER BY seq DESC LIMIT $16
        ) b WHERE b.running > NULL::integer ORDER BY b.seq DESC LIMIT 1
    ), 0) END) AS f) fl
    CROSS JOIN LATERAL (
        (SELECT e.id AS m_id, e.conversation_id AS m_conversation_id, e.seq AS m_seq, e.role AS m_role, e.content AS m_content, e.metadata AS m_metadata, e.tokens AS m_tokens, CASE WHEN e.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN e.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE e.created_at END AS m_created_at, e.covers_through AS m_covers_through, e.content_sealed AS m_content_sealed, e.metadata_sealed AS m_metadata_sealed, NOT (e.xmax = '0'::xid) AS touched, e.seq AS pos FROM messages e
         WHERE e.conversation_id = t.m_conversation_id AND e.seq < t.m_seq
           AND e.seq > greatest(g.through, fl.f) AND e.covers_through IS NULL AND g.id IS NOT NULL
         ORDER BY e.seq DESC LIMIT $16)
        UNION ALL SELECT earlier.*, NULL::boolean, earlier.m_seq FROM earlier WHERE g.id IS NOT NULL
        UNION ALL
        SELECT e.id AS m_id, e.conversation_id AS m_conversation_id, e.seq AS m_seq, e.role AS m_role, e.content AS m_content, e.metadata AS m_metadata, e.tokens AS m_tokens, CASE WHEN e.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN e.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE e.created_at END AS m_created_at, e.covers_through AS m_covers_through, e.content_sealed AS m_content_sealed, e.metadata_sealed AS m_metadata_sealed, NOT (e.xmax = '0'::xid) AS touched, e.covers_through FROM messages e
        WHERE e.id = g.id AND e.conversation_id = t.m_conversation_id AND fl.f = 0
          AND e.covers_through < t.m_seq AND g.id IS NOT NULL
    ) u
    WINDOW w AS (ORDER BY u.pos DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) x
    WHERE x.k <= $16 AND (($17::integer - coalesce(t.m_tokens, (coalesce(octet_length(t.m_content_sealed) - 45, octet_length(t.m_content)) + 3) / 4)) IS NULL OR x.running <= ($17::integer - coalesce(t.m_tokens, (coalesce(octet_length(t.m_content_sealed) - 45, octet_length(t.m_content)) + 3) / 4)))) v
    UNION ALL
    SELECT NULL, NULL, h.seq, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NOT (h.xmax = '0'::xid) FROM messages h
    WHERE h.conversation_id = t.m_conversation_id AND h.covers_through IS NOT NULL
      AND h.seq > g.through AND h.seq < t.m_seq
) e

