
UPDATE sessionstore_keys k SET wrapped = u.wrapped, master_key_id = $1
FROM unnest($2::uuid[], $3::bytea[]) AS u(key_id, wrapped) WHERE k.key_id = u.key_id

