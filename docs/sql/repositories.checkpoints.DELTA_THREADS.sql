
SELECT DISTINCT thread_id FROM langgraph_checkpoints
WHERE thread_id = ANY($1::text[]) AND delta

