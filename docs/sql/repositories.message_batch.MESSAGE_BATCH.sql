
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::message_role[], $5::text[], $6::jsonb[], $7::integer[], $8::timestamptz[], $9::bytea[], $10::bytea[]) WITH ORDINALITY AS u(id, conversation_id, continuation_id, role, content, metadata, tokens, enqueued_at, content_sealed, metadata_sealed, ord)
),
stored AS (  -- probed by primary key: an anti-join would scan all messages per batch
    SELECT id FROM messages WHERE id = ANY($1::uuid[])
),
fresh AS (
    SELECT i.* FROM input i WHERE NOT EXISTS (SELECT 1 FROM stored s WHERE s.id = i.id)
),
resolved AS (
    SELECT f.id, coalesce(f.conversation_id, c.id) AS conversation_id, f.role, f.content,
           f.metadata, f.tokens, f.enqueued_at, f.content_sealed, f.metadata_sealed, f.ord
    FROM fresh f
    LEFT JOIN conversations c
           ON f.conversation_id IS NULL AND c.continuation_id = f.continuation_id
),
per_conv AS (
    SELECT conversation_id, count(*)::integer AS n, coalesce(sum(tokens), 0) AS tok,
           max(enqueued_at) AS last_at
    FROM resolved WHERE conversation_id IS NOT NULL GROUP BY conversation_id
),
bumped AS (
    UPDATE conversations c SET message_count = c.message_count + p.n, total_tokens = c.total_tokens + p.tok, last_message_at = greatest(c.last_message_at, p.last_at)
    FROM per_conv p
    WHERE c.id = p.conversation_id
    RETURNING c.id, c.message_count, p.n
),
ins AS (
    INSERT INTO messages (id, conversation_id, seq, role, content, metadata, tokens, created_at,
                          content_sealed, metadata_sealed)
    SELECT f.id, f.conversation_id, b.message_count - b.n + row_number() OVER (PARTITION BY f.conversation_id ORDER BY f.ord), f.role, f.content,
           coalesce(f.metadata, '{}'::jsonb), f.tokens, f.enqueued_at, f.content_sealed,
           f.metadata_sealed
    FROM resolved f JOIN bumped b ON b.id = f.conversation_id
    RETURNING id
)
SELECT (SELECT count(*) FROM ins) AS inserted,
       ARRAY(SELECT f.id FROM resolved f
             WHERE NOT EXISTS (SELECT 1 FROM bumped b WHERE b.id = f.conversation_id)) AS rejected

