
INSERT INTO sessionstore_private.keys (key_id, user_id, wrapped, master_key_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING

