SELECT id FROM conversations WHERE id = $1 FOR UPDATE
