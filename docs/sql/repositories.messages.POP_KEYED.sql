
WITH gone AS (
    DELETE FROM messages WHERE id = (
        SELECT id FROM messages WHERE conversation_id = $1 AND session_id = $2::uuid
        ORDER BY seq DESC LIMIT 1
    ) AND session_id = $2::uuid
    RETURNING id AS id, conversation_id AS conversation_id, seq AS seq, role AS role, content AS content, metadata AS metadata, tokens AS tokens, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS created_at, covers_through AS covers_through, content_sealed AS content_sealed, metadata_sealed AS metadata_sealed
),
counted AS (
    UPDATE conversations SET message_count = gone.seq - 1, total_tokens = total_tokens - coalesce(gone.tokens, 0), last_message_at = (SELECT max(p.created_at) FROM messages p WHERE p.conversation_id = $1 AND p.session_id = $2::uuid AND p.seq < gone.seq), updated_at = now(),
        -- the live summary popped: the one before it is live again (if still stored)
        compacted_through = CASE WHEN gone.covers_through IS NULL THEN compacted_through
            ELSE (SELECT p.covers_through FROM messages p
                  WHERE p.conversation_id = $1 AND p.session_id = $2::uuid AND p.covers_through IS NOT NULL
                    AND p.seq < gone.seq ORDER BY p.seq DESC LIMIT 1) END
    FROM gone WHERE conversations.id = $1 AND conversations.session_id = $2::uuid
)
SELECT * FROM gone

