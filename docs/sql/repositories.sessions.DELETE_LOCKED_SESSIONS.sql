
WITH conversations_gone AS (
    DELETE FROM conversations WHERE session_id = ANY($1::uuid[]) AND $2
),
gone AS (DELETE FROM sessions WHERE id = ANY($1::uuid[]) RETURNING 1)
SELECT count(*) AS deleted FROM gone

