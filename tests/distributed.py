"""What Citus demands of a distributed layout, read from the catalogs: shared by the
tests that build the keyed layout on plain PostgreSQL and those on a real Citus cluster."""

from __future__ import annotations

import asyncpg

from sessionstore.distribution import CO_LOCATED, THREADS

#: Each distributed table and the column it is distributed by.
DISTRIBUTED = {
    **dict(CO_LOCATED),
    "continuations": "continuation_id",
    **dict.fromkeys(THREADS, "thread_id"),
}

_KEYS = """
SELECT con.conname, con.contype, rel.relname AS table_name, ref.relname AS referenced,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) k
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k)::text[] AS cols,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) k
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k)::text[] AS ref_cols
FROM pg_constraint con
JOIN pg_class rel ON rel.oid = con.conrelid
JOIN pg_namespace n ON n.oid = rel.relnamespace
LEFT JOIN pg_class ref ON ref.oid = con.confrelid
WHERE n.nspname = 'public' AND con.contype IN ('p', 'u', 'f', 'x')
  AND rel.relname = ANY($1::text[])
"""
_TRIGGERS = """
SELECT c.relname || '.' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND n.nspname = 'public' AND c.relname = ANY($1::text[])
"""
_POLICIES_WITH_SUBQUERIES = """
SELECT tablename || '.' || policyname FROM pg_policies
WHERE schemaname = 'public' AND tablename = ANY($1::text[])
  AND (coalesce(qual, '') ILIKE '%select%' OR coalesce(with_check, '') ILIKE '%select%')
"""


async def citus_violations(conn: asyncpg.Connection) -> list[str]:
    """Every way the connected database's layout breaks Citus's rules for the tables in
    :data:`DISTRIBUTED`: a primary, unique or exclusion key without the distribution
    column; a foreign key between distributed tables that does not join on it; a trigger;
    a policy with a subquery. Empty: Citus accepts the layout."""
    tables = list(DISTRIBUTED)
    found: list[str] = []
    for key in await conn.fetch(_KEYS, tables):
        column = DISTRIBUTED[key["table_name"]]
        if column not in key["cols"]:
            found.append(f"{key['table_name']}.{key['conname']} lacks {column}")
            continue
        if key["contype"] != "f":
            continue
        referenced = key["referenced"]
        if referenced not in DISTRIBUTED:
            found.append(f"{key['table_name']}.{key['conname']} references {referenced}")
            continue
        # The distribution columns must match up, position for position.
        pairs = dict(zip(key["cols"], key["ref_cols"], strict=True))
        if pairs.get(column) != DISTRIBUTED[referenced]:
            found.append(f"{key['table_name']}.{key['conname']} does not join on {column}")
    found += [f"trigger {t}" for (t,) in await conn.fetch(_TRIGGERS, tables)]
    found += [f"policy {p}" for (p,) in await conn.fetch(_POLICIES_WITH_SUBQUERIES, tables)]
    return sorted(found)
