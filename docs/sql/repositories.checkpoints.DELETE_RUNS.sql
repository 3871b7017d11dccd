
WITH gone AS (
    DELETE FROM langgraph_checkpoints WHERE (metadata ->> 'run_id') = ANY($1::text[])
    RETURNING thread_id, checkpoint_ns, checkpoint_id
),
writes_gone AS (
    DELETE FROM langgraph_writes w USING gone g
    WHERE w.thread_id = g.thread_id AND w.checkpoint_ns = g.checkpoint_ns
      AND w.checkpoint_id = g.checkpoint_id
)
SELECT DISTINCT thread_id FROM gone

