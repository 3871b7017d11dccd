
SELECT thread_id FROM langgraph_threads WHERE thread_id = ANY($1::text[])
ORDER BY thread_id FOR UPDATE

