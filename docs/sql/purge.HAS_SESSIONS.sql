SELECT EXISTS (SELECT 1 FROM sessions WHERE user_id = $1)
