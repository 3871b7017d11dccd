
WITH scanned AS (  -- bounded: a table of conversations with nothing due is read in steps
    SELECT id, message_count FROM conversations
    WHERE id >= $1 AND (id > $1 OR $2) AND id = ANY($6::uuid[])
    ORDER BY id
    LIMIT 2000
),
candidates AS (
    SELECT c.id, least(c.message_count - $3 - oldest.seq + 1, $5) AS most
    FROM scanned c
    CROSS JOIN LATERAL (
        SELECT m.seq, m.created_at FROM messages m
        WHERE m.conversation_id = c.id AND m.id IS DISTINCT FROM (SELECT ls.id FROM (SELECT s.id, s.covers_through AS through FROM messages s
    WHERE s.conversation_id = c.id
      AND s.covers_through IS NOT NULL
    ORDER BY s.seq DESC LIMIT 1) ls)
        ORDER BY m.seq LIMIT 1
    ) oldest
    WHERE oldest.seq <= c.message_count - $3
      AND ((now() - $4::interval) IS NULL OR oldest.created_at < (now() - $4::interval))
    ORDER BY c.id
    LIMIT $5
),
considered AS (  -- most: how many may be due (every message the count rule lets go)
    SELECT id FROM (
        SELECT id, sum(most) OVER (ORDER BY id) - most AS before FROM candidates
    ) r
    WHERE before < $5
),
locked AS (
    SELECT id FROM conversations WHERE id IN (SELECT id FROM considered)
    ORDER BY id
    FOR NO KEY UPDATE
)
SELECT r.id, r.locked,
       CASE WHEN r.id IS NULL AND (SELECT count(*) FROM scanned) = 2000
            THEN (SELECT id FROM scanned ORDER BY id DESC LIMIT 1) END AS scanned_to
FROM (SELECT 1) one
LEFT JOIN (
    SELECT considered.id, locked.id IS NOT NULL AS locked
    FROM considered LEFT JOIN locked USING (id)
) r ON true
ORDER BY r.id

