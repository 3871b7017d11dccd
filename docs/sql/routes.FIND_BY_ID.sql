SELECT session_id, continuation_id FROM conversations WHERE id = $1
