
UPDATE continuations SET session_id = $2, conversation_id = $3 WHERE continuation_id = $1

