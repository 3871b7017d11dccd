
INSERT INTO conversations (continuation_id, session_id)
SELECT $1, $2::uuid
WHERE $2::uuid IS NULL OR EXISTS (SELECT 1 FROM sessions WHERE id = $2::uuid)
ON CONFLICT (continuation_id) DO NOTHING

