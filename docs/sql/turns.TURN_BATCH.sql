
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::message_role[], $5::text[], $6::jsonb[], $7::integer[], $8::timestamptz[], $9::bytea[], $10::bytea[]) WITH ORDINALITY AS u(id, continuation_id, session_id, role, content, metadata, tokens, enqueued_at, content_sealed, metadata_sealed, ord)
),
stored AS (  -- probed by primary key: an anti-join would scan all messages per batch
    SELECT id FROM messages WHERE id = ANY($1::uuid[])
),
fresh AS (
    SELECT i.* FROM input i WHERE NOT EXISTS (SELECT 1 FROM stored s WHERE s.id = i.id)
),
live AS (  -- the batch's sessions that take turns, locked first like every writer
    SELECT s.id FROM sessions s
    WHERE s.id IN (SELECT session_id FROM fresh) AND s.status = 'active' AND (s.expires_at IS NULL OR s.expires_at > now())
    ORDER BY s.id
    FOR UPDATE
),
ok AS (
    SELECT f.* FROM fresh f WHERE f.session_id IS NULL OR f.session_id IN (SELECT id FROM live)
),
owner AS (  -- each conversation's session: its own, else the first one the batch names
    SELECT o.continuation_id, coalesce(
        (SELECT c.session_id FROM conversations c WHERE c.continuation_id = o.continuation_id),
        (array_agg(o.session_id ORDER BY o.ord) FILTER (WHERE o.session_id IS NOT NULL))[1]
    ) AS session_id
    FROM ok o GROUP BY o.continuation_id
),
accepted AS (
    SELECT o.*, w.session_id AS owner_id FROM ok o JOIN owner w USING (continuation_id)
    WHERE (w.session_id IS NULL OR o.session_id IS NULL OR w.session_id = o.session_id)
),
per_conv AS (
    SELECT continuation_id, (array_agg(owner_id))[1] AS session_id, count(*)::integer AS n,
           coalesce(sum(tokens), 0) AS tok, max(enqueued_at) AS last_at
    FROM accepted GROUP BY continuation_id
),
conv AS (
    INSERT INTO conversations AS c
        (continuation_id, session_id, message_count, last_message_at, total_tokens)
    SELECT continuation_id, session_id, n, last_at, tok FROM per_conv
    ON CONFLICT (continuation_id) DO UPDATE
    SET session_id = coalesce(c.session_id, EXCLUDED.session_id), message_count = c.message_count + EXCLUDED.message_count, total_tokens = c.total_tokens + EXCLUDED.total_tokens, last_message_at = greatest(c.last_message_at, EXCLUDED.last_message_at)
    WHERE (c.session_id IS NULL OR EXCLUDED.session_id IS NULL OR c.session_id = EXCLUDED.session_id)
    RETURNING c.id, c.continuation_id, c.message_count
),
written AS (
    SELECT a.*, conv.id AS conversation_id FROM accepted a JOIN conv USING (continuation_id)
),
ins AS (
    INSERT INTO messages (id, conversation_id, seq, role, content, metadata, tokens, created_at,
                          content_sealed, metadata_sealed)
    SELECT a.id, a.conversation_id, conv.message_count - p.n + row_number() OVER (PARTITION BY a.continuation_id ORDER BY a.ord), a.role, a.content,
           coalesce(a.metadata, '{}'::jsonb), a.tokens, a.enqueued_at, a.content_sealed,
           a.metadata_sealed
    FROM written a
    JOIN conv ON conv.continuation_id = a.continuation_id
    JOIN per_conv p ON p.continuation_id = a.continuation_id
    RETURNING id
),
per_session AS (
    SELECT session_id, count(*)::integer AS n, coalesce(sum(tokens), 0) AS tok
    FROM written WHERE session_id IS NOT NULL GROUP BY session_id
),
sess AS (  -- counted only for turns whose conversation took them
    UPDATE sessions s SET turn_count = s.turn_count + p.n, total_tokens = s.total_tokens + p.tok, expires_at = CASE WHEN $11::interval IS NOT NULL AND s.expires_at IS NOT NULL THEN greatest(s.expires_at, now() + $11::interval) ELSE s.expires_at END
    FROM per_session p
    WHERE s.id = p.session_id
    RETURNING s.id
)
SELECT (SELECT count(*) FROM ins) AS inserted,
       ARRAY(SELECT f.id FROM fresh f
             WHERE f.session_id IS NOT NULL AND f.session_id NOT IN (SELECT id FROM live))
           AS refused_by_session,
       ARRAY(SELECT o.id FROM ok o WHERE NOT EXISTS (SELECT 1 FROM written w WHERE w.id = o.id))
           AS refused_by_owner

