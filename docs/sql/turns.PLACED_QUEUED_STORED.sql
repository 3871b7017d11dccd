SELECT id FROM messages WHERE session_id = $1 AND id = ANY($2::uuid[])
