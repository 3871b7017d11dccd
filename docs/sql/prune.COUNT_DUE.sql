
WITH scanned AS (
    SELECT id, message_count FROM conversations WHERE id > $3 ORDER BY id LIMIT 2000
)
SELECT (SELECT count(*) FROM (
            SELECT m.id, m.conversation_id, m.seq, bool_and(((now() - $2::interval) IS NULL OR m.created_at < (now() - $2::interval))) OVER (PARTITION BY m.conversation_id ORDER BY m.seq) AS due, c.message_count
            FROM scanned c
            CROSS JOIN LATERAL (
                SELECT (SELECT ls.id FROM (SELECT s.id, s.covers_through AS through FROM messages s
    WHERE s.conversation_id = c.id
      AND s.covers_through IS NOT NULL
    ORDER BY s.seq DESC LIMIT 1) ls) AS summary_id
            ) live
            JOIN messages m ON m.conversation_id = c.id AND m.id IS DISTINCT FROM live.summary_id
        ) r
        WHERE due AND seq <= message_count - $1) AS due,
       (SELECT count(*) FROM scanned) AS scanned,
       (SELECT id FROM scanned ORDER BY id DESC LIMIT 1) AS last

