SELECT id FROM sessions WHERE id = $1 AND status = 'active' AND (expires_at IS NULL OR expires_at > now()) FOR UPDATE
