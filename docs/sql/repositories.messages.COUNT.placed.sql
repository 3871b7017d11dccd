SELECT message_count FROM conversations WHERE id = $1 AND session_id = $2::uuid
