DELETE FROM conversations WHERE id = $1 AND session_id = $2::uuid RETURNING id, continuation_id
