
DELETE FROM conversations WHERE id IN (
    SELECT c.id FROM sessions s JOIN conversations c ON c.session_id = s.id
    WHERE s.user_id = $1
    LIMIT $2
)

