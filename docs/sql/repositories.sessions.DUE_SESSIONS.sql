SELECT id FROM sessions WHERE expires_at IS NOT NULL AND expires_at < now() AND status <> 'completed' LIMIT $1
