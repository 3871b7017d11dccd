
DELETE FROM langgraph_blobs WHERE (thread_id, checkpoint_ns, channel, version) IN (
    SELECT thread_id, checkpoint_ns, channel, version FROM langgraph_blobs
    WHERE thread_id IN (
    SELECT t.thread_id FROM sessions s JOIN langgraph_threads t ON t.session_id = s.id
    WHERE s.user_id = $1) LIMIT $2
)

