
WITH conv AS (UPDATE conversations SET message_count = message_count + 1, total_tokens = total_tokens + coalesce($5::integer, 0), last_message_at = greatest(last_message_at, now()) WHERE continuation_id = $1 RETURNING id, message_count)
INSERT INTO messages
    (id, conversation_id, seq, role, content, metadata, tokens, content_sealed,
     metadata_sealed)
SELECT coalesce(u.id, gen_random_uuid()), conv.id, conv.message_count - 1 + u.ord, u.role, u.content,
       coalesce(u.metadata, '{}'::jsonb), u.tokens, u.content_sealed, u.metadata_sealed
FROM conv, (SELECT $2::message_role AS role, $3::text AS content, $4::jsonb AS metadata, $5::integer AS tokens, $6::uuid AS id, $7::bytea AS content_sealed, $8::bytea AS metadata_sealed, 1 AS ord) AS u
RETURNING id AS id, conversation_id AS conversation_id, seq AS seq, role AS role, content AS content, metadata AS metadata, tokens AS tokens, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS created_at, covers_through AS covers_through, content_sealed AS content_sealed, metadata_sealed AS metadata_sealed

