
SELECT id AS id, user_id AS user_id, title AS title, CASE WHEN status IN ('active', 'paused') AND expires_at <= now() THEN 'expired' ELSE status END AS status, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS created_at, CASE WHEN updated_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN updated_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE updated_at END AS updated_at, CASE WHEN expires_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN expires_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE expires_at END AS expires_at, metadata AS metadata, turn_count AS turn_count, total_tokens AS total_tokens, version AS version FROM sessions
WHERE user_id = $1
  AND ($2::text IS NULL OR CASE WHEN status IN ('active', 'paused') AND expires_at <= now() THEN 'expired' ELSE status END = $2)
  AND ($3::timestamptz IS NULL OR (sessions.created_at, sessions.id) < ($3, $4::uuid) AND NOT ($3 = '0001-01-01 00:00:00.000001+00:00'::timestamptz AND sessions.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz AND sessions.id >= $4::uuid))
-- qualified: a bare name would sort by the select list's (clamped) created_at, no index
ORDER BY sessions.created_at DESC, sessions.id DESC
LIMIT $5

