
UPDATE sessions
SET title = CASE WHEN $2 THEN $3 ELSE title END,
    metadata = CASE WHEN $4::jsonb IS NULL THEN metadata ELSE metadata || $4::jsonb END,
    version = version + 1
WHERE id = $1 AND ($5::integer IS NULL OR version = $5)
  AND status IN ('active', 'paused', 'completed') AND (expires_at IS NULL OR expires_at > now())
RETURNING id AS id, user_id AS user_id, title AS title, CASE WHEN status IN ('active', 'paused') AND expires_at <= now() THEN 'expired' ELSE status END AS status, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS created_at, CASE WHEN updated_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN updated_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE updated_at END AS updated_at, CASE WHEN expires_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN expires_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE expires_at END AS expires_at, metadata AS metadata, turn_count AS turn_count, total_tokens AS total_tokens, version AS version

