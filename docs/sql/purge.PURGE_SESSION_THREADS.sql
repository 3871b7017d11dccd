DELETE FROM langgraph_threads WHERE session_id = $1
