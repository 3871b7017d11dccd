
WITH messages_gone AS (DELETE FROM messages WHERE session_id = $1 RETURNING 1),
conversations_gone AS (DELETE FROM conversations WHERE session_id = $1 RETURNING 1),
sessions_gone AS (DELETE FROM sessions WHERE id = $1 RETURNING 1)
SELECT (SELECT count(*) FROM messages_gone) AS messages,
       (SELECT count(*) FROM conversations_gone) AS conversations,
       (SELECT count(*) FROM sessions_gone) AS sessions

