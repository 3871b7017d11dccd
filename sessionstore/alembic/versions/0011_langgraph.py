"""langgraph: the LangGraph checkpointer's threads, checkpoints, blobs and writes

``sessionstore.integrations.langgraph.SessionStoreSaver`` keeps LangGraph's checkpoints
in four tables of their own:

- ``langgraph_threads``: one row per LangGraph ``thread_id``, bound to the sessionstore
  session it belongs to (``session_id``; NULL: a service-path thread of no session) and
  deleted with it (``ON DELETE CASCADE``: ``sessions.delete``, ``cleanup_expired`` and
  ``purge_user`` take the thread along);
- ``langgraph_checkpoints``: one row per checkpoint, the checkpoint itself as the
  saver's serializer wrote it (``type``, ``checkpoint``), its channel versions (to find
  its blobs) and its metadata as jsonb (to filter on); ``delta``: the checkpoint holds
  a LangGraph ``DeltaChannel`` snapshot or counters, which ``keep_latest`` must not prune;
- ``langgraph_blobs``: channel values by (channel, version), shared by every checkpoint
  of the thread and namespace that has that version;
- ``langgraph_writes``: the pending writes of a checkpoint's tasks.

The last three go with their thread (``ON DELETE CASCADE``). Row-level security as on
the other tables (revision 0004's rules): a user reaches the threads of their own
sessions and what hangs off them; a thread of no session is the service path's only;
each table has a ``*_service_role_all`` policy. The policies read
``request.jwt.claims`` directly, so they apply on vanilla PostgreSQL too.

Downgrade drops the four tables (their policies go with them).

Revision ID: 0011_langgraph
Revises: 0010_compaction
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0011_langgraph"
down_revision = "0010_compaction"
branch_labels = None
depends_on = None

# A copy of 0004's: revisions are frozen and never import each other.
_CLAIMS = "nullif(current_setting('request.jwt.claims', true), '')::jsonb"
SUB = (
    f"(SELECT j.c ->> 'sub' FROM (SELECT {_CLAIMS} AS c) j WHERE j.c ->> 'role' = 'authenticated')"
)
IS_SERVICE = f"((SELECT {_CLAIMS} ->> 'role') = 'service_role')"

_THREAD = """
    thread_id text NOT NULL
        CONSTRAINT {table}_thread_id_fkey
        REFERENCES langgraph_threads (thread_id) ON DELETE CASCADE,
    checkpoint_ns text NOT NULL DEFAULT ''"""
TABLES = (
    """
    CREATE TABLE langgraph_threads (
        thread_id text PRIMARY KEY,
        session_id uuid
            CONSTRAINT langgraph_threads_session_id_fkey
            REFERENCES sessions (id) ON DELETE CASCADE,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX idx_langgraph_threads_session_id ON langgraph_threads (session_id)",
    f"""
    CREATE TABLE langgraph_checkpoints ({_THREAD.format(table="langgraph_checkpoints")},
        checkpoint_id text NOT NULL,
        parent_checkpoint_id text,
        type text NOT NULL,
        checkpoint bytea NOT NULL,
        channel_versions jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        delta boolean NOT NULL DEFAULT false,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
    )
    """,
    "CREATE INDEX idx_langgraph_checkpoints_run_id"
    " ON langgraph_checkpoints ((metadata ->> 'run_id'))",
    f"""
    CREATE TABLE langgraph_blobs ({_THREAD.format(table="langgraph_blobs")},
        channel text NOT NULL,
        version text NOT NULL,
        type text NOT NULL,
        blob bytea,
        PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
    )
    """,
    f"""
    CREATE TABLE langgraph_writes ({_THREAD.format(table="langgraph_writes")},
        checkpoint_id text NOT NULL,
        task_id text NOT NULL,
        task_path text NOT NULL DEFAULT '',
        idx integer NOT NULL,
        channel text NOT NULL,
        type text NOT NULL,
        blob bytea NOT NULL,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
    )
    """,
)
LANGGRAPH_TABLES = (
    "langgraph_threads",
    "langgraph_checkpoints",
    "langgraph_blobs",
    "langgraph_writes",
)
OWN_SESSION = f"session_id IN (SELECT id FROM sessions WHERE user_id = {SUB})"
OWN_THREAD = (
    "thread_id IN (SELECT thread_id FROM langgraph_threads"
    f" WHERE session_id IN (SELECT id FROM sessions WHERE user_id = {SUB}))"
)


def _policies() -> list[tuple[str, str, str]]:
    policies = []
    for table in LANGGRAPH_TABLES:
        own = OWN_SESSION if table == "langgraph_threads" else OWN_THREAD
        policies.append((f"{table}_own", table, f"FOR ALL USING ({own}) WITH CHECK ({own})"))
        policies.append(
            (
                f"{table}_service_role_all",
                table,
                f"FOR ALL USING {IS_SERVICE} WITH CHECK {IS_SERVICE}",
            )
        )
    return policies


def upgrade() -> None:
    for statement in TABLES:
        op.execute(statement)
    for table in LANGGRAPH_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    for name, table, body in _policies():
        op.execute(f"CREATE POLICY {name} ON {table} {body}")


def downgrade() -> None:
    for table in reversed(LANGGRAPH_TABLES):
        op.execute(f"DROP TABLE {table}")
