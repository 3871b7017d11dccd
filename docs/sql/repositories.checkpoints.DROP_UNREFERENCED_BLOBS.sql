
DELETE FROM langgraph_blobs b
WHERE b.thread_id = ANY($1::text[])
  AND (b.thread_id, b.checkpoint_ns, b.channel, b.version) NOT IN (
      SELECT c.thread_id, c.checkpoint_ns, v.key, v.value
      FROM langgraph_checkpoints c, jsonb_each_text(c.channel_versions) v
      WHERE c.thread_id = ANY($1::text[]))

