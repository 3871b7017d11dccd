
WITH copied AS (
    INSERT INTO messages (conversation_id, seq, role, content, metadata, tokens, created_at, covers_through, content_sealed, metadata_sealed)
    SELECT $2, seq, role, content, metadata, tokens, created_at, covers_through, content_sealed, metadata_sealed FROM messages WHERE conversation_id = $1 AND seq <= $3
    RETURNING content_sealed
)
SELECT EXISTS (SELECT 1 FROM copied WHERE content_sealed IS NOT NULL) AS sealed_copies

