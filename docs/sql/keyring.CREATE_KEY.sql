
INSERT INTO sessionstore_private.keys (key_id, user_id, wrapped, master_key_id)
SELECT $1, $2, $3, $4
WHERE $2::text IS NULL
   OR EXISTS (SELECT 1 FROM sessions WHERE user_id = $2 LIMIT 1 FOR KEY SHARE)
ON CONFLICT DO NOTHING

