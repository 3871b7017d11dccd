
WITH app AS (
    INSERT INTO adk_app_states AS a (app_name, state)
    SELECT $1, $4::jsonb WHERE $4::jsonb IS NOT NULL
    ON CONFLICT (app_name) DO UPDATE SET state = a.state || EXCLUDED.state, updated_at = now()
    RETURNING a.state
),
usr AS (
    INSERT INTO adk_user_states AS u (app_name, user_id, state)
    SELECT $1, $2, $5::jsonb WHERE $5::jsonb IS NOT NULL
    ON CONFLICT (app_name, user_id) DO UPDATE
    SET state = u.state || EXCLUDED.state, updated_at = now()
    RETURNING u.state
),
sess AS (
    INSERT INTO adk_session_states AS s (session_id, state)
    SELECT $3, $6::jsonb WHERE $6::jsonb IS NOT NULL
    ON CONFLICT (session_id) DO UPDATE SET state = s.state || EXCLUDED.state, updated_at = now()
    RETURNING s.state
)
SELECT coalesce((SELECT state FROM app),
                (SELECT state FROM adk_app_states WHERE app_name = $1)) AS app_state,
       coalesce((SELECT state FROM usr),
                (SELECT state FROM adk_user_states WHERE app_name = $1 AND user_id = $2))
           AS user_state,
       coalesce((SELECT state FROM sess),
                (SELECT state FROM adk_session_states WHERE session_id = $3)) AS session_state

