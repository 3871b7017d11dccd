SELECT session_id, conversation_id FROM continuations WHERE continuation_id = $1
