
WITH live AS (SELECT id FROM sessions WHERE id = $2 AND status = 'active' AND (expires_at IS NULL OR expires_at > now()) FOR UPDATE),
src AS (
    SELECT id, message_count FROM conversations
    WHERE session_id = $2 AND id = $1 AND EXISTS (SELECT 1 FROM live)
    FOR SHARE
)
SELECT named.id AS named_id, src.id AS source_id, src.message_count AS source_count,
       EXISTS (SELECT 1 FROM live) AS live,
       f.id AS taken_id, f.forked_from, f.forked_at_seq, f.session_id AS taken_session
FROM (SELECT 1) one
LEFT JOIN conversations named ON named.session_id = $2 AND named.id = $1
LEFT JOIN src ON true
LEFT JOIN conversations f ON f.session_id = $2 AND f.continuation_id = $3

