
UPDATE langgraph_checkpoints c SET parent_checkpoint_id = NULL
WHERE c.thread_id = ANY($1::text[]) AND c.parent_checkpoint_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM langgraph_checkpoints p
                  WHERE p.thread_id = c.thread_id AND p.checkpoint_ns = c.checkpoint_ns
                    AND p.checkpoint_id = c.parent_checkpoint_id)

