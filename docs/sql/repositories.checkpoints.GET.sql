
SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, c.type,
       c.checkpoint, c.metadata::text AS metadata,
       ARRAY(SELECT ROW(b.channel, b.type, b.blob)
             FROM jsonb_each_text(c.channel_versions) v
             JOIN langgraph_blobs b ON b.thread_id = c.thread_id
                 AND b.checkpoint_ns = c.checkpoint_ns AND b.channel = v.key
                 AND b.version = v.value) AS blobs,
       ARRAY(SELECT ROW(w.task_id, w.channel, w.type, w.blob, w.task_path, w.idx)
             FROM langgraph_writes w
             WHERE w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns
               AND w.checkpoint_id = c.checkpoint_id) AS writes
FROM langgraph_checkpoints c
WHERE c.thread_id = $1 AND c.checkpoint_ns = $2 AND c.checkpoint_id = $3
