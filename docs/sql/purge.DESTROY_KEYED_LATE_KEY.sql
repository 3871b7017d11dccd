DELETE FROM sessionstore_private.keys WHERE user_id = $1 RETURNING key_id
