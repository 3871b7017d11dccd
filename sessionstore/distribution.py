"""The distributed layout: the schema keyed by session, for Citus.

On Citus every unique key and foreign key of a distributed table must include its
distribution column, a distributed table may carry no trigger, and a policy may hold no
subquery. The layout here keys everything a turn touches by the session, so a session,
its conversations and their messages sit on one shard:

- ``sessions`` is distributed by ``id``; ``conversations``, ``messages`` and
  ``adk_session_states`` by ``session_id``, co-located with it. ``messages`` carries the
  session (filled from its conversation), and the primary, unique and foreign keys of
  both lead with it. A conversation must belong to a session: there is no shard for one
  that does not (the conversion refuses a database holding any).
- ``continuations`` (continuation id → session, conversation) is distributed by the
  continuation id: it keeps a continuation id unique across sessions and finds its
  conversation's shard from the continuation id alone.
- ``adk_app_states``, ``adk_user_states`` and ``sessionstore_private.keys`` are small
  and global: reference tables, a copy on every node.
- LangGraph's tables are distributed by ``thread_id``, co-located with each other; a
  thread's session is no longer a foreign key (the two are placed apart).
- The triggers go (the store sets ``updated_at`` and notifies its caches itself; writers
  of the original schema do not run against a distributed database), and so do the
  row-level-security policies: ``as_user`` is refused on this layout (claims set by
  ``set_config`` do not reach the workers). Row-level security stays enabled, so the API
  roles read nothing.

:func:`distribute` converts a database at head in place, in one transaction, existing
rows included (Citus moves them to the shards). Without Citus (``citus=False``) it builds
the same keyed layout on plain PostgreSQL, which the tests use to check the invariants
Citus demands where no Citus runs.

``sessionstore migrate`` runs it (with Citus) once a database with the ``citus``
extension is at head. Downgrading the layout is refused: it is the head schema there.
"""

from __future__ import annotations

import functools
import logging
import re
from datetime import UTC, datetime
from typing import Any

import asyncpg

from .errors import InvalidInputError
from .models import Connection

__all__ = [
    "CO_LOCATED",
    "KEYED_LAYOUT",
    "REFERENCE",
    "THREADS",
    "ClockedConnection",
    "clocked",
    "distribute",
    "has_citus",
    "is_distributed",
    "is_keyed",
]

logger = logging.getLogger("sessionstore")

#: Tables distributed by their session, co-located with ``sessions`` (first), with the
#: column each is distributed by.
CO_LOCATED = (
    ("sessions", "id"),
    ("conversations", "session_id"),
    ("messages", "session_id"),
    ("adk_session_states", "session_id"),
)
#: LangGraph's tables: distributed by thread, co-located with ``langgraph_threads``.
THREADS = ("langgraph_threads", "langgraph_checkpoints", "langgraph_blobs", "langgraph_writes")
#: Small, global tables: a copy on every node.
REFERENCE = ("adk_app_states", "adk_user_states", "sessionstore_private.keys")

_HAS_CITUS = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"
#: Whether the database has the keyed layout: its continuations table is there.
KEYED_LAYOUT = "SELECT to_regclass('continuations') IS NOT NULL"
_IS_DISTRIBUTED = (
    "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass('sessions'))"
)
_UNPLACED = "SELECT count(*) FROM conversations WHERE session_id IS NULL"

# Every statement that makes the keyed layout, in order. Keys are dropped before the
# ones replacing them are added; the foreign keys referencing a primary key go first.
_KEYED = (
    # No trigger on a distributed table: updated_at and the cache's notifications are
    # the store's; seq and counters for original writers do not apply here.
    "DROP TRIGGER IF EXISTS sessions_notify_update ON sessions",
    "DROP TRIGGER IF EXISTS sessions_notify_delete ON sessions",
    "DROP TRIGGER IF EXISTS trigger_sessions_updated_at ON sessions",
    "DROP TRIGGER IF EXISTS update_conversations_updated_at ON conversations",
    "DROP TRIGGER IF EXISTS sessionstore_append_original ON messages",
    # Messages carry their session.
    "ALTER TABLE messages ADD COLUMN session_id uuid",
    "UPDATE messages m SET session_id = c.session_id FROM conversations c"
    " WHERE c.id = m.conversation_id",
    "ALTER TABLE messages ALTER COLUMN session_id SET NOT NULL",
    "ALTER TABLE conversations ALTER COLUMN session_id SET NOT NULL",
    # Foreign keys that do not lead with the session go.
    "ALTER TABLE messages DROP CONSTRAINT messages_conversation_id_fkey",
    "ALTER TABLE conversations DROP CONSTRAINT conversations_forked_from_fkey",
    "ALTER TABLE conversations DROP CONSTRAINT conversations_session_id_fkey",
    "ALTER TABLE langgraph_threads DROP CONSTRAINT langgraph_threads_session_id_fkey",
    # Keys that lead with the session.
    "ALTER TABLE messages DROP CONSTRAINT messages_pkey,"
    " ADD CONSTRAINT messages_pkey PRIMARY KEY (session_id, id)",
    "ALTER TABLE messages DROP CONSTRAINT uq_messages_conversation_seq,"
    " ADD CONSTRAINT uq_messages_conversation_seq UNIQUE (session_id, conversation_id, seq)",
    "ALTER TABLE conversations DROP CONSTRAINT conversations_pkey,"
    " ADD CONSTRAINT conversations_pkey PRIMARY KEY (session_id, id)",
    "ALTER TABLE conversations DROP CONSTRAINT conversations_continuation_id_key,"
    " ADD CONSTRAINT conversations_continuation_id_key UNIQUE (session_id, continuation_id)",
    # Deleting a session deletes its conversations (the store does so already on every
    # path; the foreign key makes it hold for any writer).
    "ALTER TABLE conversations ADD CONSTRAINT conversations_session_id_fkey"
    " FOREIGN KEY (session_id) REFERENCES sessions (id) ON DELETE CASCADE",
    "ALTER TABLE messages ADD CONSTRAINT messages_conversation_id_fkey"
    " FOREIGN KEY (session_id, conversation_id) REFERENCES conversations (session_id, id)"
    " ON DELETE CASCADE",
    # A continuation id is unique across sessions, and names its session.
    """CREATE TABLE continuations (
        continuation_id text PRIMARY KEY,
        session_id uuid NOT NULL,
        conversation_id uuid NOT NULL
    )""",
    "INSERT INTO continuations SELECT continuation_id, session_id, id FROM conversations",
    "ALTER TABLE continuations ENABLE ROW LEVEL SECURITY",
    "REVOKE ALL ON continuations FROM PUBLIC",
)
_CO_LOCATE = "SELECT create_distributed_table($1, $2, colocate_with => $3)"
_DROP_POLICIES = (
    "SELECT format('DROP POLICY %I ON %I.%I', policyname, schemaname, tablename)"
    " FROM pg_policies WHERE schemaname = current_schema()"
)
_API_ROLES = (
    "SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')"
)


async def has_citus(conn: asyncpg.Connection) -> bool:
    """Whether the ``citus`` extension is installed in the connected database."""
    return bool(await conn.fetchval(_HAS_CITUS))


async def is_keyed(conn: asyncpg.Connection) -> bool:
    """Whether the database has the keyed layout."""
    return bool(await conn.fetchval(KEYED_LAYOUT))


async def is_distributed(conn: asyncpg.Connection) -> bool:
    """Whether ``sessions`` is a Citus distributed table (``False`` without Citus)."""
    return await has_citus(conn) and bool(await conn.fetchval(_IS_DISTRIBUTED))


async def distribute(conn: asyncpg.Connection, *, citus: bool) -> bool:
    """Give the database at head the keyed layout and, with ``citus``, distribute it.

    Runs in one transaction; returns whether anything changed (``False`` when the layout
    is there already). ``InvalidInputError`` (naming ``dsn``), before
    anything changes, when a conversation belongs to no session: it has no shard.
    """
    changed = False
    async with conn.transaction():
        if not await is_keyed(conn):
            unplaced = await conn.fetchval(_UNPLACED)
            if unplaced:
                raise InvalidInputError(
                    "dsn",
                    f"{unplaced} conversations belong to no session and a distributed layout"
                    " has no shard for them: bind them to a session or delete them first",
                )
            for statement in _KEYED:
                await conn.execute(statement)
            for (drop,) in await conn.fetch(_DROP_POLICIES):
                await conn.execute(drop)
            for (role,) in await conn.fetch(_API_ROLES):
                await conn.execute(f'REVOKE ALL ON continuations FROM "{role}"')
            changed = True
        if citus and not await is_distributed(conn):
            (first, key), *rest = CO_LOCATED
            await conn.execute("SELECT create_distributed_table($1, $2)", first, key)
            for table, column in rest:
                await conn.execute(_CO_LOCATE, table, column, first)
            await conn.execute(_CO_LOCATE, "continuations", "continuation_id", "none")
            thread, *thread_tables = THREADS
            await conn.execute(_CO_LOCATE, thread, "thread_id", "none")
            for table in thread_tables:
                await conn.execute(_CO_LOCATE, table, "thread_id", thread)
            for table in REFERENCE:
                await conn.execute("SELECT create_reference_table($1)", table)
            changed = True
    if changed:
        logger.warning("database given the distributed layout%s", " on Citus" if citus else "")
    return changed


_PLACEHOLDER = re.compile(r"\$(\d+)")
_NOW = "now()"
_NOW_PLUS = re.compile(r"now\(\) \+ \$(\d+)::interval")


@functools.lru_cache(maxsize=1024)
def clocked(query: str) -> tuple[str, tuple[int, ...]]:
    """``query`` with its clock sent by the client, and what the parameters appended to
    it hold: the clock for a 0, the clock plus the interval parameter ``$k`` for a k.

    Citus refuses ``now()`` inside ``CASE``, ``COALESCE`` and ``RETURNING`` of a
    distributed write (non-IMMUTABLE functions, ``timestamptz + interval`` among them),
    which is where the session rules read it; on the distributed layout every statement
    therefore reads the clock of the store that sends it, one value per statement, and
    the application servers' clocks must agree as their expiry decisions do.
    """
    if _NOW not in query:
        return query, ()
    last = max((int(n) for n in _PLACEHOLDER.findall(query)), default=0)
    added: list[int] = []

    def ahead(found: re.Match[str]) -> str:
        interval = int(found[1])
        added.append(interval)
        # $k stays in the text (the server must still type it), in immutable terms.
        return (
            f"(CASE WHEN ${interval}::interval IS NULL THEN NULL"
            f" ELSE ${last + len(added)}::timestamptz END)"
        )

    text = _NOW_PLUS.sub(ahead, query)
    if _NOW in text:
        added.append(0)
        text = text.replace(_NOW, f"${last + len(added)}::timestamptz")
    return text, tuple(added)


class ClockedConnection:
    """A pooled connection on the distributed layout: statements run as :func:`clocked`
    makes them, with the clock appended to their arguments; everything else is the
    connection's own."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    @staticmethod
    def _clock(query: str, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        text, added = clocked(query)
        if added:
            now = datetime.now(UTC)
            args = (*args, *(_ahead(now, args, k) for k in added))
        return text, args

    async def fetch(self, query: str, *args: Any, **options: Any) -> Any:
        text, args = self._clock(query, args)
        return await self._conn.fetch(text, *args, **options)

    async def fetchrow(self, query: str, *args: Any, **options: Any) -> Any:
        text, args = self._clock(query, args)
        return await self._conn.fetchrow(text, *args, **options)

    async def fetchval(self, query: str, *args: Any, **options: Any) -> Any:
        text, args = self._clock(query, args)
        return await self._conn.fetchval(text, *args, **options)

    async def execute(self, query: str, *args: Any, **options: Any) -> str:
        text, args = self._clock(query, args)
        return await self._conn.execute(text, *args, **options)


def _ahead(now: datetime, args: tuple[Any, ...], position: int) -> datetime | None:
    """The clock (``position`` 0), or the clock plus the interval argument ``$position``
    (``None`` when that is)."""
    if not position:
        return now
    interval = args[position - 1]
    return None if interval is None else now + interval
