
WITH checkpoints AS (
    INSERT INTO langgraph_checkpoints (thread_id, checkpoint_ns, checkpoint_id,
        parent_checkpoint_id, type, checkpoint, channel_versions, metadata, delta)
    SELECT $2, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint,
           channel_versions, metadata, delta
    FROM langgraph_checkpoints WHERE thread_id = $1
    ON CONFLICT DO NOTHING
),
blobs AS (
    INSERT INTO langgraph_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT $2, checkpoint_ns, channel, version, type, blob
    FROM langgraph_blobs WHERE thread_id = $1
    ON CONFLICT DO NOTHING
)
INSERT INTO langgraph_writes (thread_id, checkpoint_ns, checkpoint_id, task_id,
    task_path, idx, channel, type, blob)
SELECT $2, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
FROM langgraph_writes WHERE thread_id = $1
ON CONFLICT DO NOTHING

