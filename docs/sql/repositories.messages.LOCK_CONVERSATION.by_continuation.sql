SELECT id FROM conversations WHERE continuation_id = $1 FOR UPDATE
