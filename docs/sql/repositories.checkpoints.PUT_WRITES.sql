
WITH th AS (
    SELECT t.thread_id, t.session_id,
           (t.session_id IS NULL OR coalesce(s.status = 'active' AND (s.expires_at IS NULL OR s.expires_at > now()), false)) AS live
    FROM langgraph_threads t LEFT JOIN sessions s ON s.id = t.session_id
    WHERE t.thread_id = $1
),
ok AS (
    SELECT thread_id FROM th WHERE live AND ($2::uuid IS NULL OR session_id = $2::uuid)
),
saved AS (
    INSERT INTO langgraph_writes AS w (thread_id, checkpoint_ns, checkpoint_id, task_id,
        task_path, idx, channel, type, blob)
    SELECT ok.thread_id, $3, $4, $5, $6, x.idx, x.channel, x.type, x.blob
    FROM ok, unnest($7::integer[], $8::text[], $9::text[], $10::bytea[])
        AS x(idx, channel, type, blob)
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO UPDATE SET
        channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob
        WHERE $11
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM ok) AS saved, EXISTS (SELECT 1 FROM th) AS known, (SELECT session_id FROM th) AS bound,
       (SELECT live FROM th) AS live

