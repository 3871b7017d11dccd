
SELECT r.rolname FROM pg_roles r
WHERE r.rolname = ANY($1::text[]) AND to_regclass('sessionstore_private.keys') IS NOT NULL
  AND (has_schema_privilege(r.oid, 'sessionstore_private', 'USAGE')
       OR has_table_privilege(r.oid, 'sessionstore_private.keys',
                              'SELECT,INSERT,UPDATE,DELETE,TRUNCATE'))
ORDER BY 1

