
INSERT INTO langgraph_threads (thread_id, session_id) VALUES ($1, $2)
ON CONFLICT (thread_id) DO NOTHING

