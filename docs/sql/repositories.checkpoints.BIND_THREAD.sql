
UPDATE langgraph_threads SET session_id = $2 WHERE thread_id = $1 AND session_id IS NULL

