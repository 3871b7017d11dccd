SELECT id FROM sessions WHERE user_id = $1 LIMIT 1
