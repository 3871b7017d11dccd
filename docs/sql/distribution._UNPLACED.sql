SELECT count(*) FROM conversations WHERE session_id IS NULL
