
INSERT INTO continuations AS r (continuation_id, session_id, conversation_id)
VALUES ($1, $2, $3)
ON CONFLICT (continuation_id) DO UPDATE SET continuation_id = r.continuation_id
RETURNING session_id, conversation_id, conversation_id = $3 AS claimed

