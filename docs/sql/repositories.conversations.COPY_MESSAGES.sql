
INSERT INTO messages (conversation_id, seq, role, content, metadata, tokens, created_at)
SELECT $2, seq, role, content, metadata, tokens, created_at FROM messages WHERE conversation_id = $1 AND seq <= $3

