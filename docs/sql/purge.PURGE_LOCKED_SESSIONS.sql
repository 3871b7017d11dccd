
WITH conv AS (SELECT id FROM conversations WHERE session_id = ANY($1::uuid[])),
messages_gone AS (
    DELETE FROM messages WHERE conversation_id IN (SELECT id FROM conv) RETURNING 1
),
conversations_gone AS (
    DELETE FROM conversations WHERE id IN (SELECT id FROM conv) RETURNING 1
),
sessions_gone AS (DELETE FROM sessions WHERE id = ANY($1::uuid[]) RETURNING 1)
SELECT (SELECT count(*) FROM messages_gone) AS messages,
       (SELECT count(*) FROM conversations_gone) AS conversations,
       (SELECT count(*) FROM sessions_gone) AS sessions

