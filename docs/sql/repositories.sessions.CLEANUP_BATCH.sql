
WITH doomed AS (
    SELECT id FROM sessions WHERE expires_at IS NOT NULL AND expires_at < now() AND status <> 'completed'
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
conversations_gone AS (
    DELETE FROM conversations c USING doomed WHERE $1 AND c.session_id = doomed.id
)
DELETE FROM sessions s USING doomed WHERE s.id = doomed.id

