
SELECT key_id, wrapped, master_key_id FROM sessionstore_private.keys
WHERE master_key_id <> $1 AND key_id > $2 ORDER BY key_id LIMIT $3

