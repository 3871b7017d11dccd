"""Row-level security on Supabase: ``store.as_user(user_id)`` runs the same API as that
Supabase user, so the database's policies decide what each user sees and may write.

It needs a Supabase database (a project's, or the Supabase CLI's local one) migrated
with ``sessionstore migrate``, reached as the ``postgres`` role over the direct connection
or the session pooler. From the repository root, with ``supabase start`` running:

    export SESSIONSTORE_DATABASE_URL=postgresql://postgres:postgres@127.0.0.1:54322/postgres
    sessionstore migrate
    python examples/supabase_rls.py

Two users (fresh ids each run) get a session each; Alice works under RLS and sees only
her own rows; at the end both users' data is purged. It prints:

    alice wrote: hi, I'm alice
    alice reads bob's session: NotFoundError
    alice creates a session for bob: PermissionDeniedError
    alice sees 1 session(s), the service path sees bob's too: True
    purged: 2 session(s), 1 conversation(s), 1 message(s)
"""

# ruff: noqa: T201 - an example prints what it shows

from __future__ import annotations

import asyncio
import sys
import uuid

import sessionstore
from sessionstore import NotFoundError, PermissionDeniedError


async def main() -> None:
    # Supabase user ids are auth.users ids (the JWT's "sub"); fresh ones keep runs apart.
    alice_id, bob_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with sessionstore.connect() as store:
        # The store's own connection is the service path: it may write for anyone.
        alice_session = await store.sessions.create(user_id=alice_id)
        bob_session = await store.sessions.create(user_id=bob_id)

        # Every call on the view is a transaction run as role `authenticated` with
        # request.jwt.claims = {"sub": alice_id, "role": "authenticated"}.
        alice = store.as_user(alice_id)
        chat = f"chat-{alice_session.id}"
        turn = await alice.add_turn(chat, "user", "hi, I'm alice", session_id=alice_session.id)
        print("alice wrote:", turn.message.content)

        try:
            await alice.sessions.get(bob_session.id)
        except NotFoundError:  # other users' rows read as absent
            print("alice reads bob's session: NotFoundError")
        try:
            await alice.sessions.create(user_id=bob_id)
        except PermissionDeniedError:  # the policies refuse the write; nothing is written
            print("alice creates a session for bob: PermissionDeniedError")

        mine = await alice.sessions.list(user_id=None)  # every session RLS lets her see
        bobs = await store.sessions.list(user_id=bob_id)
        print(
            f"alice sees {len(mine.items)} session(s),",
            "the service path sees bob's too:",
            [s.id for s in bobs.items] == [bob_session.id],
        )

        # Clean up: each user's sessions with their conversations and messages.
        a = await store.purge_user(alice_id)
        b = await store.purge_user(bob_id)
        print(
            f"purged: {a.sessions + b.sessions} session(s), "
            f"{a.conversations + b.conversations} conversation(s), "
            f"{a.messages + b.messages} message(s)"
        )


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except sessionstore.SessionStoreError as error:  # one sentence, no traceback
        sys.exit(f"supabase_rls: {error}")
