
WITH checkpoints_gone AS (
    DELETE FROM langgraph_checkpoints WHERE thread_id = ANY($1::text[]) RETURNING 1
),
blobs_gone AS (DELETE FROM langgraph_blobs WHERE thread_id = ANY($1::text[])),
writes_gone AS (DELETE FROM langgraph_writes WHERE thread_id = ANY($1::text[]))
SELECT count(*) FROM checkpoints_gone

