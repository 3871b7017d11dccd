SELECT id, session_id FROM conversations WHERE continuation_id = $1 FOR UPDATE
