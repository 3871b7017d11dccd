SELECT message_count FROM conversations WHERE continuation_id = $1
