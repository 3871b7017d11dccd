
SELECT c.relname, c.relrowsecurity,
       coalesce(array_agg(p.policyname) FILTER (WHERE p.policyname IS NOT NULL), '{}') AS policies,
       ARRAY(SELECT r.rolname FROM pg_roles r
             WHERE r.rolname = ANY($2::text[])
               AND has_table_privilege(r.oid, c.oid, 'SELECT,INSERT,UPDATE,DELETE')
             ORDER BY r.rolname) AS api_roles
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
LEFT JOIN pg_policies p ON p.tablename = c.relname AND p.schemaname = n.nspname
WHERE c.relname = ANY($1::text[]) AND c.relkind = 'r'
GROUP BY c.relname, c.relrowsecurity, c.oid

