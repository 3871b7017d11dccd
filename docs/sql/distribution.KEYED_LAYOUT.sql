SELECT to_regclass('continuations') IS NOT NULL
