
SELECT m.id, m.content, m.metadata::text AS metadata, s.user_id
FROM messages m 
LEFT JOIN conversations c ON c.id = m.conversation_id
LEFT JOIN sessions s ON s.id = c.session_id
WHERE m.content_sealed IS NULL
ORDER BY m.id LIMIT $1
FOR UPDATE OF m SKIP LOCKED

