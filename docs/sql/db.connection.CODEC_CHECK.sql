SELECT jsonb_typeof($1::jsonb), '{"k": 1}'::jsonb
