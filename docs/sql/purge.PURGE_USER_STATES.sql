
DELETE FROM adk_user_states WHERE (app_name, user_id) IN (
    SELECT app_name, user_id FROM adk_user_states WHERE user_id = $1 LIMIT $2
)

