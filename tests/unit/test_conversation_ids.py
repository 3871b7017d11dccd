"""A conversation is named by its UUID or a ContinuationId; a plain string that is no UUID
gets an error that names the way out (pure; no database)."""

from __future__ import annotations

from uuid import UUID

import pytest

from sessionstore import ContinuationId, InvalidInputError
from sessionstore import validation as v

PRIVATE = "my-private-chat"


def test_a_plain_continuation_id_is_refused_with_the_wrapper_named() -> None:
    with pytest.raises(InvalidInputError) as info:
        v.conversation(PRIVATE)
    assert info.value.field == "conversation_id"
    assert str(info.value) == (
        f"conversation_id: must be a UUID or its string form, got a str of length"
        f" {len(PRIVATE)}; a continuation id must be wrapped: ContinuationId(continuation_id)"
    )
    assert PRIVATE not in str(info.value)


def test_the_hint_is_for_strings_only() -> None:
    with pytest.raises(InvalidInputError) as info:
        v.conversation(42)
    assert str(info.value) == "conversation_id: must be a UUID or its string form, got int"


def test_a_session_id_gets_no_continuation_hint() -> None:
    with pytest.raises(InvalidInputError) as info:
        v.uuid(PRIVATE, "session_id")
    assert "ContinuationId" not in str(info.value)


def test_both_kinds_of_id_are_accepted() -> None:
    uid = UUID("01890a5d-ac96-774b-bcce-b302099a8057")
    assert v.conversation(str(uid)) == uid
    assert v.conversation(uid) == uid
    wrapped = v.conversation(ContinuationId(PRIVATE))
    assert (type(wrapped), wrapped) == (ContinuationId, PRIVATE)
