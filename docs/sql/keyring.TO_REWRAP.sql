
SELECT key_id, wrapped, master_key_id FROM sessionstore_keys
WHERE master_key_id <> $1 ORDER BY key_id LIMIT $2 FOR UPDATE SKIP LOCKED

