
DELETE FROM messages WHERE id IN (
    SELECT m.id FROM sessions s
    JOIN conversations c ON c.session_id = s.id
    JOIN messages m ON m.conversation_id = c.id
    WHERE s.user_id = $1
    LIMIT $2
)

