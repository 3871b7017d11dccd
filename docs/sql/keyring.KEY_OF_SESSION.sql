
SELECT o.user_id, k.* FROM (SELECT user_id FROM sessions WHERE id = $1) o LEFT JOIN LATERAL (
    SELECT k.key_id, k.wrapped, k.master_key_id FROM sessionstore_private.keys k WHERE k.user_id = o.user_id
    UNION ALL
    SELECT k.key_id, k.wrapped, k.master_key_id FROM sessionstore_private.keys k WHERE k.user_id IS NULL AND o.user_id IS NULL
) k ON true

