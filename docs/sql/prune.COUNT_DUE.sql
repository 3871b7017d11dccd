
SELECT count(*) FROM (
    SELECT m.id, m.conversation_id, m.seq, bool_and(((now() - $2::interval) IS NULL OR m.created_at < (now() - $2::interval))) OVER (PARTITION BY m.conversation_id ORDER BY m.seq) AS due, c.message_count
    FROM conversations c JOIN messages m ON m.conversation_id = c.id
) r
WHERE due AND seq <= message_count - $1

