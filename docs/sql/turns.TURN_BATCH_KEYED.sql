
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::message_role[], $5::text[], $6::jsonb[], $7::integer[], $8::timestamptz[], $9::bytea[], $10::bytea[]) WITH ORDINALITY AS u(id, continuation_id, session_id, role, content, metadata, tokens, enqueued_at, content_sealed, metadata_sealed, ord)
),
stored AS (  -- probed by primary key: an anti-join would scan all messages per batch
    SELECT id FROM messages WHERE id = ANY($1::uuid[]) AND session_id = $14::uuid
),
fresh AS (
    SELECT i.* FROM input i WHERE NOT EXISTS (SELECT 1 FROM stored s WHERE s.id = i.id)
),
placed AS (
    SELECT * FROM unnest($12::text[], $13::uuid[], $15::boolean[])
        AS r(continuation_id, conversation_id, create_it)
),
live AS (
    SELECT s.id FROM sessions s WHERE s.id = $14::uuid AND s.status = 'active' AND (s.expires_at IS NULL OR s.expires_at > now()) FOR UPDATE
),
ok AS (SELECT f.* FROM fresh f WHERE f.session_id IS NULL OR EXISTS (SELECT 1 FROM live)),
per_conv AS (
    SELECT o.continuation_id, count(*)::integer AS n, coalesce(sum(o.tokens), 0) AS tok,
           max(o.enqueued_at) AS last_at
    FROM ok o GROUP BY o.continuation_id
),
created AS (
    INSERT INTO conversations AS c
        (id, continuation_id, session_id, message_count, last_message_at, total_tokens)
    SELECT r.conversation_id, p.continuation_id, $14::uuid, p.n, p.last_at, p.tok
    FROM per_conv p JOIN placed r USING (continuation_id) WHERE r.create_it
    ON CONFLICT (session_id, continuation_id) DO UPDATE
    SET message_count = c.message_count + EXCLUDED.message_count, total_tokens = c.total_tokens + EXCLUDED.total_tokens, last_message_at = greatest(c.last_message_at, EXCLUDED.last_message_at), updated_at = now()
    RETURNING c.id, c.continuation_id, c.message_count
),
appended AS (
    UPDATE conversations AS c SET message_count = c.message_count + p.n, total_tokens = c.total_tokens + p.tok, last_message_at = greatest(c.last_message_at, p.last_at), updated_at = now()
    FROM per_conv p JOIN placed r USING (continuation_id)
    WHERE NOT r.create_it AND c.session_id = $14::uuid AND c.id = r.conversation_id
    RETURNING c.id, c.continuation_id, c.message_count
),
conv AS (SELECT * FROM created UNION ALL SELECT * FROM appended),
written AS (
    SELECT a.*, conv.id AS conversation_id FROM ok a JOIN conv USING (continuation_id)
),
ins AS (
    INSERT INTO messages (session_id, id, conversation_id, seq, role, content, metadata,
                          tokens, created_at, content_sealed, metadata_sealed)
    SELECT $14::uuid, a.id, a.conversation_id, conv.message_count - p.n + row_number() OVER (PARTITION BY a.continuation_id ORDER BY a.ord), a.role, a.content,
           coalesce(a.metadata, '{}'::jsonb), a.tokens, a.enqueued_at, a.content_sealed,
           a.metadata_sealed
    FROM written a
    JOIN conv ON conv.continuation_id = a.continuation_id
    JOIN per_conv p ON p.continuation_id = a.continuation_id
    RETURNING id
),
per_session AS (
    SELECT count(*)::integer AS n, coalesce(sum(tokens), 0) AS tok
    FROM written WHERE session_id IS NOT NULL HAVING count(*) > 0
),
sess AS (
    UPDATE sessions s SET turn_count = s.turn_count + p.n, total_tokens = s.total_tokens + p.tok, expires_at = CASE WHEN $11::interval IS NOT NULL AND s.expires_at IS NOT NULL THEN greatest(s.expires_at, now() + $11::interval) ELSE s.expires_at END, updated_at = now()
    FROM per_session p
    WHERE s.id = $14::uuid
    RETURNING s.id
)
SELECT (SELECT count(*) FROM ins) AS inserted,
       ARRAY(SELECT f.id FROM fresh f
             WHERE f.session_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM live))
           AS refused_by_session,
       ARRAY(SELECT o.id FROM ok o WHERE NOT EXISTS (SELECT 1 FROM written w WHERE w.id = o.id))
           AS refused_by_owner

