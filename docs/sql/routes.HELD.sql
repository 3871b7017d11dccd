SELECT EXISTS (SELECT 1 FROM conversations WHERE session_id = $1 AND id = $2)
