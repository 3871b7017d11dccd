
SELECT f.id AS fork_id, s.id AS source_id, s.content_sealed, s.metadata_sealed
FROM messages f JOIN messages s
  ON s.session_id = f.session_id AND s.conversation_id = $1 AND s.seq = f.seq
WHERE f.session_id = $3 AND f.conversation_id = $2 AND f.content_sealed IS NOT NULL

