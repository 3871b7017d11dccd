DELETE FROM langgraph_threads WHERE thread_id = $1
