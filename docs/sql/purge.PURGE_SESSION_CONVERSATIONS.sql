
DELETE FROM conversations WHERE session_id = $1 AND id IN (
    SELECT id FROM conversations WHERE session_id = $1 LIMIT $2
)

