
DELETE FROM langgraph_writes WHERE (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) IN (
    SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx FROM langgraph_writes
    WHERE thread_id IN (
    SELECT t.thread_id FROM sessions s JOIN langgraph_threads t ON t.session_id = s.id
    WHERE s.user_id = $1) LIMIT $2
)

