
WITH th AS (
    SELECT t.thread_id, t.session_id,
           (t.session_id IS NULL OR coalesce(s.status = 'active' AND (s.expires_at IS NULL OR s.expires_at > now()), false)) AS live
    FROM langgraph_threads t LEFT JOIN sessions s ON s.id = t.session_id
    WHERE t.thread_id = $1
),
ok AS (
    SELECT thread_id FROM th WHERE live AND ($2::uuid IS NULL OR session_id = $2::uuid)
),
blobs AS (
    INSERT INTO langgraph_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT ok.thread_id, $3, b.channel, b.version, b.type, b.blob
    FROM ok, unnest($11::text[], $12::text[], $13::text[], $14::bytea[])
        AS b(channel, version, type, blob)
    ON CONFLICT DO NOTHING
),
saved AS (
    INSERT INTO langgraph_checkpoints AS c (thread_id, checkpoint_ns, checkpoint_id,
        parent_checkpoint_id, type, checkpoint, channel_versions, metadata, delta)
    SELECT ok.thread_id, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10 FROM ok
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET
        type = EXCLUDED.type, checkpoint = EXCLUDED.checkpoint,
        channel_versions = EXCLUDED.channel_versions, metadata = EXCLUDED.metadata,
        delta = EXCLUDED.delta
    RETURNING 1
),
slid AS (
    UPDATE sessions s SET expires_at = greatest(s.expires_at, now() + $15::interval)
    FROM th
    WHERE s.id = th.session_id AND $15::interval IS NOT NULL AND s.expires_at IS NOT NULL
      AND EXISTS (SELECT 1 FROM ok)
)
SELECT EXISTS (SELECT 1 FROM saved) AS saved, EXISTS (SELECT 1 FROM th) AS known, (SELECT session_id FROM th) AS bound,
       (SELECT live FROM th) AS live

