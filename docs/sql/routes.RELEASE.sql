DELETE FROM continuations WHERE continuation_id = $1 AND conversation_id = $2
