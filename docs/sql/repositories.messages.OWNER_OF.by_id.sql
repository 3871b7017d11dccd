SELECT session_id FROM conversations WHERE id = $1
