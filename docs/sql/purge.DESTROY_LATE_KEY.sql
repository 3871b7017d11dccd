
DELETE FROM sessionstore_private.keys
WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM sessions WHERE user_id = $1)
RETURNING key_id

