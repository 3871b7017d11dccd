SELECT key_id, wrapped, master_key_id FROM sessionstore_private.keys WHERE key_id = ANY($1)
