
WITH gone AS (
    DELETE FROM messages WHERE conversation_id = $1 RETURNING 1
),
counted AS (
    UPDATE conversations
    SET message_count = 0, total_tokens = 0, last_message_at = NULL,
        compacted_through = NULL
    WHERE id = $1
)
SELECT count(*) FROM gone

