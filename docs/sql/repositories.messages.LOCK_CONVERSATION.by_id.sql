SELECT id, session_id FROM conversations WHERE id = $1 FOR UPDATE
