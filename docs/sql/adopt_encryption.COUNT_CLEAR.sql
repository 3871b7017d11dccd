SELECT count(*) FROM messages WHERE content_sealed IS NULL
