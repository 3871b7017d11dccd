
WITH kept AS (
    SELECT DISTINCT ON (thread_id, checkpoint_ns) thread_id, checkpoint_ns, checkpoint_id
    FROM langgraph_checkpoints WHERE thread_id = ANY($1::text[])
    ORDER BY thread_id, checkpoint_ns, checkpoint_id DESC
),
checkpoints_gone AS (
    DELETE FROM langgraph_checkpoints c
    WHERE c.thread_id = ANY($1::text[])
      AND (c.thread_id, c.checkpoint_ns, c.checkpoint_id) NOT IN (SELECT * FROM kept)
    RETURNING 1
),
writes_gone AS (
    DELETE FROM langgraph_writes w
    WHERE w.thread_id = ANY($1::text[])
      AND (w.thread_id, w.checkpoint_ns, w.checkpoint_id) NOT IN (SELECT * FROM kept)
)
SELECT count(*) FROM checkpoints_gone

