SELECT id FROM sessions WHERE id = $1 AND user_id = $2 FOR KEY SHARE
