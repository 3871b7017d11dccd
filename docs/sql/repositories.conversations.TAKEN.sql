
SELECT id AS taken_id, forked_from, forked_at_seq, session_id AS taken_session
FROM conversations WHERE continuation_id = $1

