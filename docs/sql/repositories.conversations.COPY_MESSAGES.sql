
INSERT INTO messages (conversation_id, seq, role, content, metadata, tokens, created_at, covers_through)
SELECT $2, seq, role, content, metadata, tokens, created_at, covers_through FROM messages WHERE conversation_id = $1 AND seq <= $3

