
SELECT id FROM conversations WHERE session_id = ANY($1::uuid[]) ORDER BY id FOR UPDATE

