SELECT key_id, wrapped, master_key_id FROM sessionstore_keys WHERE key_id = ANY($1)
