
WITH kept AS (
    SELECT DISTINCT ON (thread_id, checkpoint_ns) thread_id, checkpoint_ns, checkpoint_id
    FROM langgraph_checkpoints WHERE thread_id = ANY($1::text[])
    ORDER BY thread_id, checkpoint_ns, checkpoint_id DESC
),
checkpoints_gone AS (
    DELETE FROM langgraph_checkpoints c
    WHERE c.thread_id = ANY($1::text[])
      AND (c.thread_id, c.checkpoint_ns, c.checkpoint_id) NOT IN (SELECT * FROM kept)
    RETURNING c.thread_id, c.checkpoint_ns, c.checkpoint_id
),
writes_gone AS (
    DELETE FROM langgraph_writes w USING checkpoints_gone g
    WHERE w.thread_id = g.thread_id AND w.checkpoint_ns = g.checkpoint_ns
      AND w.checkpoint_id = g.checkpoint_id
)
SELECT count(*) FROM checkpoints_gone

