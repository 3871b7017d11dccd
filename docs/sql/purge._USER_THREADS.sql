
    SELECT t.thread_id FROM sessions s JOIN langgraph_threads t ON t.session_id = s.id
    WHERE s.user_id = $1
