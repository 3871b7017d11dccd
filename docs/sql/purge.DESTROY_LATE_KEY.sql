
DELETE FROM sessionstore_keys
WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM sessions WHERE user_id = $1)
RETURNING key_id

