
WITH cur AS (SELECT id, status, expires_at, version FROM sessions WHERE id = $1),
mark AS (
    UPDATE sessions s SET status = 'expired', version = s.version + 1
    FROM cur
    WHERE s.id = cur.id AND CASE WHEN cur.status IN ('active', 'paused') AND cur.expires_at <= now() THEN 'expired' ELSE cur.status END = 'expired' AND cur.status <> 'expired'
    RETURNING s.id
)
SELECT CASE WHEN cur.status IN ('active', 'paused') AND cur.expires_at <= now() THEN 'expired' ELSE cur.status END AS status, version FROM cur

