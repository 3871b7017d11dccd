SELECT id, session_id FROM conversations WHERE id = $1 AND session_id = $2::uuid FOR UPDATE
