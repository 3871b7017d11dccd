
SELECT DISTINCT s.user_id FROM (
    SELECT m.conversation_id FROM messages m
    WHERE m.content_sealed IS NULL AND m.id > $2 ORDER BY m.id LIMIT $1
) m 
LEFT JOIN conversations c ON c.id = m.conversation_id
LEFT JOIN sessions s ON s.id = c.session_id

