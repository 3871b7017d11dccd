
WITH conversations_gone AS (
    DELETE FROM conversations WHERE session_id = $1 AND NOT $2
)
DELETE FROM sessions WHERE id = $1 RETURNING id

