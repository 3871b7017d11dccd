
DELETE FROM messages WHERE session_id = $1 AND id IN (
    SELECT id FROM messages WHERE session_id = $1 LIMIT $2
)

