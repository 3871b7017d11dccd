
SELECT set_config('request.jwt.claims', $1, true), set_config('role', 'authenticated', true)

