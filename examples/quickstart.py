"""The README's example as a script: a session, two turns, the history read back.

Run it from the repository root against a migrated database:

    export SESSIONSTORE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres
    sessionstore migrate
    python examples/quickstart.py

It prints the length of the context the first turn read back and the history, then the
session's status, turn count and token total:

    1 [(1, 'user', 'hi'), (2, 'assistant', 'hello!')]
    active 2 52
"""

# ruff: noqa: T201 - an example prints what it shows

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import sessionstore
from sessionstore import ContinuationId


async def main() -> None:
    # The DSN comes from SESSIONSTORE_DATABASE_URL (connect() reads it).
    async with sessionstore.connect() as store:
        s = await store.sessions.create(user_id="u1", ttl=timedelta(hours=24))
        chat = f"chat-{s.id}"  # a continuation id belongs to the session that starts it
        # one round trip: the user's message appended, the model's context read back
        turn = await store.add_turn(chat, "user", "hi", session_id=s.id, tokens=40, context=20)
        await store.add_turn(chat, "assistant", "hello!", session_id=s.id, tokens=12)
        history = await store.messages.history(ContinuationId(chat), limit=20)
        print(len(turn.context or []), [(m.seq, m.role.value, m.content) for m in history])
        s = await store.sessions.get(s.id)
        print(s.status.value, s.turn_count, s.total_tokens)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except sessionstore.SessionStoreError as error:  # one sentence, no traceback
        sys.exit(f"quickstart: {error}")
