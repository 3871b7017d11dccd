"""Write-behind: ``enqueue_turn`` returns at once, ``flush()`` makes everything durable,
and a turn that can never be written is reported to ``on_write_error`` (and listed by
``store.failed_writes()``) instead of being lost silently.

Run it from the repository root against a migrated database:

    export SESSIONSTORE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres
    sessionstore migrate
    python examples/write_behind.py

It prints:

    visible before flush: 6
    written: 6
    set aside: one more -> session not found, not active or expired
    failed_writes(): 1
    completed 6 90
"""

# ruff: noqa: T201 - an example prints what it shows

from __future__ import annotations

import asyncio
import sys

import sessionstore
from sessionstore import ContinuationId, FailedWrite


async def main() -> None:
    set_aside: list[FailedWrite] = []
    # on_write_error is called (in the writer's task) with each message that can never be
    # written: its session is gone or no longer active, or the database refuses its data.
    async with sessionstore.connect(on_write_error=set_aside.append) as store:
        s = await store.sessions.create(user_id="u1")
        chat = f"chat-{s.id}"
        for i in range(1, 4):
            # each call returns the message's id at once; a background task writes batches
            await store.enqueue_turn(chat, "user", f"question {i}", session_id=s.id, tokens=10)
            await store.enqueue_turn(chat, "assistant", f"answer {i}", session_id=s.id, tokens=20)
        # read-your-writes: this process sees its queued messages before they are durable
        history = await store.messages.history(ContinuationId(chat))
        print("visible before flush:", len(history))

        await store.flush()  # everything enqueued so far is durable now
        print("written:", store.stats().written)

        # A turn for a session that is no longer active is accepted (input is checked at
        # once; the session at write time) and then set aside: nothing of it is written.
        await store.sessions.complete(s.id)
        late = await store.enqueue_turn(chat, "user", "one more", session_id=s.id)
        await store.flush()
        for failed in set_aside:
            name = "one more" if failed.id == late else str(failed.id)
            print(f"set aside: {name} -> {failed.reason}")
        print("failed_writes():", len(store.failed_writes()))

        s = await store.sessions.get(s.id)
        print(s.status.value, s.turn_count, s.total_tokens)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except sessionstore.SessionStoreError as error:  # one sentence, no traceback
        sys.exit(f"write_behind: {error}")
