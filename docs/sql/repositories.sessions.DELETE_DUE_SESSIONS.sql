
WITH gone AS (
    DELETE FROM sessions WHERE id = ANY($1::uuid[]) AND expires_at IS NOT NULL AND expires_at < now() AND status <> 'completed' RETURNING 1
)
SELECT count(*) AS deleted FROM gone

