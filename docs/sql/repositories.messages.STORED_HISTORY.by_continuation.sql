
SELECT m.*, c.compacted_through AS conv_compacted FROM conversations c
LEFT JOIN LATERAL (
    SELECT id AS id, conversation_id AS conversation_id, seq AS seq, role AS role, content AS content, metadata AS metadata, tokens AS tokens, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS created_at, covers_through AS covers_through, content_sealed AS content_sealed, metadata_sealed AS metadata_sealed FROM messages
    WHERE conversation_id = c.id AND seq < $3 AND seq > (CASE WHEN $5::integer IS NULL THEN 0 ELSE coalesce((
        SELECT b.seq FROM (
            SELECT seq, sum(coalesce(tokens, (coalesce(octet_length(content_sealed) - 45, octet_length(content)) + 3) / 4)) OVER (
                ORDER BY seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
            ) AS running
            FROM messages
            WHERE conversation_id = c.id AND seq < $3
            ORDER BY seq DESC LIMIT $2
        ) b WHERE b.running > $5::integer ORDER BY b.seq DESC LIMIT 1
    ), 0) END)
    ORDER BY seq DESC
    LIMIT $2
) m ON true
WHERE c.continuation_id = $1 AND ($4::uuid IS NULL OR c.session_id IS NOT DISTINCT FROM $4::uuid)
ORDER BY m.seq

