
UPDATE sessionstore_private.keys k SET wrapped = u.new_wrapped, master_key_id = $1
FROM unnest($2::uuid[], $3::bytea[], $4::bytea[]) AS u(key_id, old_wrapped, new_wrapped)
WHERE k.key_id = u.key_id AND k.wrapped = u.old_wrapped

