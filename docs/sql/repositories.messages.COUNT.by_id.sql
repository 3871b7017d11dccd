SELECT message_count FROM conversations WHERE id = $1
