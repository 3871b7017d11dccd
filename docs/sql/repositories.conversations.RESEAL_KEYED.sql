
UPDATE messages m SET content_sealed = u.content_sealed, metadata_sealed = u.metadata_sealed
FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS u(id, content_sealed, metadata_sealed)
WHERE m.session_id = $4 AND m.id = u.id

