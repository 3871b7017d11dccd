SELECT id, session_id, message_count, compacted_through FROM conversations WHERE continuation_id = $1 FOR UPDATE
