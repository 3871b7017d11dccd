SELECT id, session_id, message_count, compacted_through FROM conversations WHERE id = $1 AND session_id = $2::uuid FOR UPDATE
