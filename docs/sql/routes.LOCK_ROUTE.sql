SELECT 1 FROM continuations WHERE continuation_id = $1 FOR UPDATE
