
SELECT m.* FROM (SELECT 1) one
LEFT JOIN LATERAL (SELECT s.id, s.covers_through AS through FROM messages s
    WHERE s.conversation_id = $1
      AND s.covers_through IS NOT NULL AND s.seq < $3
    ORDER BY s.seq DESC LIMIT 1) g ON true
CROSS JOIN LATERAL (
    (SELECT id AS id, conversation_id AS conversation_id, seq AS seq, role AS role, content AS content, metadata AS metadata, tokens AS tokens, CASE WHEN created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE created_at END AS created_at, covers_through AS covers_through, content_sealed AS content_sealed, metadata_sealed AS metadata_sealed FROM messages
     WHERE conversation_id = $1 AND seq < $3 AND g.id IS NULL
       AND seq > (CASE WHEN $4::integer IS NULL THEN 0 ELSE coalesce((
        SELECT b.seq FROM (
            SELECT seq, sum(coalesce(tokens, (coalesce(octet_length(content_sealed) - 45, octet_length(content)) + 3) / 4)) OVER (
                ORDER BY seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
            ) AS running
            FROM messages
            WHERE conversation_id = $1 AND seq < $3
            ORDER BY seq DESC LIMIT $2
        ) b WHERE b.running > $4::integer ORDER BY b.seq DESC LIMIT 1
    ), 0) END)
     ORDER BY seq DESC
     LIMIT $2)
    UNION ALL
    SELECT v.id, v.conversation_id, v.seq, v.role, v.content, v.metadata, v.tokens, v.created_at, v.covers_through, v.content_sealed, v.metadata_sealed
    FROM (SELECT x.* FROM (SELECT u.*, count(*) OVER w AS k, sum(coalesce(u.tokens, (coalesce(octet_length(u.content_sealed) - 45, octet_length(u.content)) + 3) / 4)) OVER w AS running
    FROM (SELECT (CASE WHEN $4::integer IS NULL THEN 0 ELSE coalesce((
        SELECT b.seq FROM (
            SELECT seq, sum(coalesce(tokens, (coalesce(octet_length(content_sealed) - 45, octet_length(content)) + 3) / 4)) OVER (
                ORDER BY seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
            ) AS running
            FROM messages
            WHERE conversation_id = $1 AND seq < $3 AND seq > g.through AND covers_through IS NULL
            ORDER BY seq DESC LIMIT $2
        ) b WHERE b.running > $4::integer ORDER BY b.seq DESC LIMIT 1
    ), 0) END) AS f) fl
    CROSS JOIN LATERAL (
        (SELECT e.id AS id, e.conversation_id AS conversation_id, e.seq AS seq, e.role AS role, e.content AS content, e.metadata AS metadata, e.tokens AS tokens, CASE WHEN e.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN e.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE e.created_at END AS created_at, e.covers_through AS covers_through, e.content_sealed AS content_sealed, e.metadata_sealed AS metadata_sealed, e.seq AS pos FROM messages e
         WHERE e.conversation_id = $1 AND e.seq < $3
           AND e.seq > greatest(g.through, fl.f) AND e.covers_through IS NULL AND g.id IS NOT NULL
         ORDER BY e.seq DESC LIMIT $2)
        
        UNION ALL
        SELECT e.id AS id, e.conversation_id AS conversation_id, e.seq AS seq, e.role AS role, e.content AS content, e.metadata AS metadata, e.tokens AS tokens, CASE WHEN e.created_at > '9999-12-31 23:59:59.999998+00:00'::timestamptz THEN '9999-12-31 23:59:59.999998+00:00'::timestamptz WHEN e.created_at < '0001-01-01 00:00:00.000001+00:00'::timestamptz THEN '0001-01-01 00:00:00.000001+00:00'::timestamptz ELSE e.created_at END AS created_at, e.covers_through AS covers_through, e.content_sealed AS content_sealed, e.metadata_sealed AS metadata_sealed, e.covers_through FROM messages e
        WHERE e.id = g.id AND e.conversation_id = $1 AND fl.f = 0
          AND e.covers_through < $3 AND g.id IS NOT NULL
    ) u
    WINDOW w AS (ORDER BY u.pos DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) x
    WHERE x.k <= $2 AND ($4::integer IS NULL OR x.running <= $4::integer)) v
) m

