SELECT format('DROP POLICY %I ON %I.%I', policyname, schemaname, tablename) FROM pg_policies WHERE schemaname = current_schema()
