"""The write-behind index that reads consult (pure; no database)."""

from __future__ import annotations

from uuid import UUID

from sessionstore import ContinuationId
from sessionstore.validation import CheckedMessage
from sessionstore.writebehind.items import accept
from sessionstore.writebehind.readyourwrites import PendingIndex

CONVERSATION = UUID(int=1)


def test_a_read_in_progress_still_finds_what_was_made_durable_since_it_began() -> None:
    index = PendingIndex()
    fields = CheckedMessage("user", "hi", None, None)
    by_name = accept("turn", fields, continuation_id="chat", session_id=UUID(int=2))
    by_id = accept("message", fields, conversation_id=CONVERSATION)
    set_aside = accept("turn", fields, continuation_id="chat", session_id=UUID(int=2))
    for item in (by_name, by_id, set_aside):
        index.add(item)
    with index.reading() as mark:
        index.discard([by_name, by_id], durable=True)
        index.discard([set_aside])
        assert index.matching(ContinuationId("chat")) == []
        found = index.matching(CONVERSATION, "chat", since=mark)
        assert {i.id for i in found} == {by_name.id, by_id.id}
        with index.reading() as later:
            assert index.matching("chat", since=later) == []
        assert [i.id for i in index.matching("chat", since=mark)] == [by_name.id]
    # No read in progress: nothing is kept.
    with index.reading() as mark:
        assert index.matching(CONVERSATION, "chat", since=mark) == []
    assert not index
