DELETE FROM conversations WHERE continuation_id = $1 RETURNING id, continuation_id
