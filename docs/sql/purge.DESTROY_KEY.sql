DELETE FROM sessionstore_keys WHERE user_id = $1 RETURNING key_id
