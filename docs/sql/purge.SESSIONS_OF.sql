SELECT id FROM sessions WHERE user_id = $1 ORDER BY id LIMIT $2
