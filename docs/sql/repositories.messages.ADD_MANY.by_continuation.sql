
WITH conv AS (UPDATE conversations SET message_count = message_count + $2, total_tokens = total_tokens + $3, last_message_at = greatest(last_message_at, now()) WHERE continuation_id = $1 RETURNING id, message_count)
INSERT INTO messages
    (id, conversation_id, seq, role, content, metadata, tokens, content_sealed,
     metadata_sealed)
SELECT coalesce(u.id, gen_random_uuid()), conv.id, conv.message_count - $2 + u.ord, u.role, u.content,
       coalesce(u.metadata, '{}'::jsonb), u.tokens, u.content_sealed, u.metadata_sealed
FROM conv, unnest($4::message_role[], $5::text[], $6::jsonb[], $7::integer[], $8::uuid[], $9::bytea[], $10::bytea[]) WITH ORDINALITY AS u(role, content, metadata, tokens, id, content_sealed, metadata_sealed, ord)
RETURNING id AS id, conversation_id AS conversation_id, seq AS seq, role AS role, content AS content, metadata AS metadata, tokens AS tokens, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS created_at, covers_through AS covers_through, content_sealed AS content_sealed, metadata_sealed AS metadata_sealed

