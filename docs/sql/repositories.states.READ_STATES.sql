
SELECT 'app' AS scope, NULL::text AS owner, state FROM adk_app_states WHERE app_name = $1
UNION ALL
SELECT 'user', user_id, state FROM adk_user_states
WHERE app_name = $1 AND ($2::text IS NULL OR user_id = $2)
UNION ALL
SELECT 'session', session_id::text, state FROM adk_session_states
WHERE session_id = ANY($3::uuid[])

