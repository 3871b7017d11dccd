
WITH src AS (SELECT thread_id, session_id FROM langgraph_threads WHERE thread_id = $1),
target AS (
    INSERT INTO langgraph_threads (thread_id, session_id)
    SELECT $2, session_id FROM src
    ON CONFLICT (thread_id) DO NOTHING
    RETURNING session_id
),
existing AS (SELECT session_id FROM langgraph_threads WHERE thread_id = $2)
SELECT EXISTS (SELECT 1 FROM src) AS source_known,
       (SELECT session_id FROM src) AS source_session,
       EXISTS (SELECT 1 FROM target) OR EXISTS (SELECT 1 FROM existing) AS target_known,
       CASE WHEN EXISTS (SELECT 1 FROM target) THEN (SELECT session_id FROM target)
            ELSE (SELECT session_id FROM existing) END AS target_session

