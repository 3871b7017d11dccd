
WITH conv AS (
    SELECT id, message_count - $2 AS upto
    FROM conversations WHERE id = ANY($1::uuid[])
),
oldest AS (
    SELECT m.id, m.conversation_id, m.seq, bool_and(((now() - $3::interval) IS NULL OR m.created_at < (now() - $3::interval))) OVER (PARTITION BY m.conversation_id ORDER BY m.seq) AS due
    FROM conv CROSS JOIN LATERAL (
        SELECT id, conversation_id, seq, created_at FROM messages
        WHERE conversation_id = conv.id AND seq <= conv.upto
          AND id IS DISTINCT FROM (SELECT ls.id FROM (SELECT s.id, s.covers_through AS through FROM messages s
    WHERE s.conversation_id = conv.id
      AND s.covers_through IS NOT NULL
    ORDER BY s.seq DESC LIMIT 1) ls)
        ORDER BY seq
        LIMIT $4
    ) m
),
chosen AS (SELECT * FROM oldest WHERE due ORDER BY conversation_id, seq LIMIT $4),
taken AS (
    SELECT id FROM messages WHERE id IN (SELECT id FROM chosen) FOR UPDATE SKIP LOCKED
),
clear AS (  -- up to the first message another transaction holds: no gap is left
    SELECT c.id, bool_and(t.id IS NOT NULL) OVER (
        PARTITION BY c.conversation_id ORDER BY c.seq
    ) AS clear
    FROM chosen c LEFT JOIN taken t USING (id)
),
gone AS (
    DELETE FROM messages WHERE id IN (SELECT id FROM clear WHERE clear)
    RETURNING conversation_id, tokens
),
per_conv AS (
    SELECT conversation_id, count(*) AS n, coalesce(sum(tokens), 0) AS tok
    FROM gone GROUP BY conversation_id
),
counted AS (
    UPDATE conversations c SET total_tokens = c.total_tokens - p.tok
    FROM per_conv p WHERE c.id = p.conversation_id
)
SELECT coalesce(sum(n), 0)::integer AS messages,
       coalesce(array_agg(conversation_id ORDER BY conversation_id), '{}') AS touched,
       (SELECT conversation_id FROM chosen ORDER BY conversation_id DESC LIMIT 1) AS last,
       (SELECT count(*) FROM chosen) = $4 AS full
FROM per_conv

