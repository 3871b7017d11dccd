SELECT id FROM conversations WHERE session_id = $1 ORDER BY id FOR UPDATE
