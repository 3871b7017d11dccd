"""ADK's session-service contract, on :class:`SessionStoreSessionService` over a real
PostgreSQL.

Google ADK checks its own session services (in-memory, database, SQLite) with one test
module, ``tests/unittests/sessions/test_session_service.py`` of google/adk-python. That
module is not in any package the package index serves (the google-adk sdist and wheel
hold no tests), so it cannot be obtained and run here as ADK runs it; these tests
state, in our own code, the behaviour each of its service-level tests asserts, with our
adapter as the service. Its tests of one backend's internals (SQLAlchemy engines and
pools, schema versions, SQLite URLs, rollback spies, the in-memory service's copy depth
and sync API, Vertex AI) have no counterpart here. ``docs/integrations/adk.md`` lists the
mapping.
"""

from __future__ import annotations

import pytest

pytest.importorskip("google.adk")

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from unittest import mock

from google.adk.errors import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.base_session_service import GetSessionConfig
from google.genai import types

from sessionstore import SessionStore
from sessionstore.integrations.adk import SessionStoreSessionService

APP = "my_app"


@pytest.fixture
def svc(store: SessionStore) -> SessionStoreSessionService:
    return SessionStoreSessionService(store)


def _delta(**delta: Any) -> EventActions:
    return EventActions(state_delta=delta)


def _now() -> float:
    return datetime.now(UTC).timestamp()


# -- create, get, list, delete ----------------------------------------------------------


async def test_an_unknown_session_reads_as_none(svc: SessionStoreSessionService) -> None:
    assert await svc.get_session(app_name=APP, user_id="nobody", session_id="404") is None


async def test_a_created_session_reads_back_equal_until_deleted(
    svc: SessionStoreSessionService,
) -> None:
    made = await svc.create_session(app_name=APP, user_id="ann", state={"colour": "teal"})
    assert (made.app_name, made.user_id, made.state) == (APP, "ann", {"colour": "teal"})
    assert made.id
    assert made.last_update_time <= _now()
    read = await svc.get_session(app_name=APP, user_id="ann", session_id=made.id)
    assert read == made
    assert read is not None
    assert read.last_update_time <= _now()
    await svc.delete_session(app_name=APP, user_id="ann", session_id=made.id)
    assert await svc.get_session(app_name=APP, user_id="ann", session_id=made.id) is None


async def test_listing_gives_each_session_with_its_state(svc: SessionStoreSessionService) -> None:
    names = [f"chat{n}" for n in range(5)]
    for name in names:
        await svc.create_session(app_name=APP, user_id="ann", session_id=name, state={"n": name})
    listed = (await svc.list_sessions(app_name=APP, user_id="ann")).sessions
    assert sorted(s.id for s in listed) == names
    assert all(s.state == {"n": s.id} for s in listed)


async def test_listing_without_a_user_gives_every_users_sessions(
    svc: SessionStoreSessionService,
) -> None:
    for user, sid in [("ann", "a1"), ("ann", "a2"), ("bo", "b1")]:
        await svc.create_session(app_name=APP, user_id=user, session_id=sid, state={"of": sid})

    async def states(user: str | None) -> dict[str, Any]:
        found = (await svc.list_sessions(app_name=APP, user_id=user)).sessions
        return {s.id: s.state for s in found}

    assert await states("ann") == {"a1": {"of": "a1"}, "a2": {"of": "a2"}}
    assert await states("bo") == {"b1": {"of": "b1"}}
    assert await states(None) == {"a1": {"of": "a1"}, "a2": {"of": "a2"}, "b1": {"of": "b1"}}


async def test_a_session_id_belongs_to_its_user(svc: SessionStoreSessionService) -> None:
    first = await svc.create_session(app_name=APP, user_id="ann", session_id="same")
    await svc.append_event(first, Event(invocation_id="i", author="user"))
    await svc.create_session(app_name=APP, user_id="bo", session_id="same")
    bos = await svc.get_session(app_name=APP, user_id="bo", session_id="same")
    assert bos is not None
    assert bos.user_id == "bo"
    assert bos.events == []


async def test_a_taken_session_id_raises_already_exists(svc: SessionStoreSessionService) -> None:
    await svc.create_session(app_name=APP, user_id="ann", session_id="taken")
    with pytest.raises(AlreadyExistsError):
        await svc.create_session(app_name=APP, user_id="ann", session_id="taken")


# -- the three scopes of state, and temp: -----------------------------------------------


async def test_app_state_reaches_every_user_of_the_app(svc: SessionStoreSessionService) -> None:
    mine = await svc.create_session(
        app_name=APP, user_id="ann", session_id="s1", state={"app:tier": "gold"}
    )
    await svc.append_event(
        mine, Event(invocation_id="i", author="user", actions=_delta(**{"app:region": "eu"}))
    )
    theirs = await svc.create_session(app_name=APP, user_id="bo", session_id="s2")
    assert theirs.state == {"app:tier": "gold", "app:region": "eu"}
    again = await svc.get_session(app_name=APP, user_id="ann", session_id="s1")
    assert again is not None
    assert (again.state["app:tier"], again.state["app:region"]) == ("gold", "eu")


async def test_user_state_reaches_only_that_users_sessions(
    svc: SessionStoreSessionService,
) -> None:
    mine = await svc.create_session(
        app_name=APP, user_id="ann", session_id="s1", state={"user:lang": "fr"}
    )
    await svc.append_event(
        mine, Event(invocation_id="i", author="user", actions=_delta(**{"user:tz": "CET"}))
    )
    second = await svc.create_session(app_name=APP, user_id="ann", session_id="s2")
    assert second.state == {"user:lang": "fr", "user:tz": "CET"}
    other = await svc.create_session(app_name=APP, user_id="bo", session_id="s3")
    assert other.state == {}


async def test_session_state_stays_in_its_session(svc: SessionStoreSessionService) -> None:
    mine = await svc.create_session(app_name=APP, user_id="ann", session_id="s1", state={"step": 1})
    await svc.append_event(mine, Event(invocation_id="i", author="user", actions=_delta(mode="x")))
    again = await svc.get_session(app_name=APP, user_id="ann", session_id="s1")
    assert again is not None
    assert (again.state["step"], again.state["mode"]) == (1, "x")
    fresh = await svc.create_session(app_name=APP, user_id="ann", session_id="s2")
    assert fresh.state == {}


async def test_temp_state_is_kept_in_memory_and_out_of_the_stored_event(
    svc: SessionStoreSessionService,
) -> None:
    session = await svc.create_session(app_name=APP, user_id="ann", session_id="s1")
    first = Event(invocation_id="i", author="a1", actions=_delta(**{"temp:out": "r", "k": "v"}))
    await svc.append_event(session, first)
    # The next agent of the same invocation reads it from the same object...
    assert (session.state["temp:out"], session.state["k"]) == ("r", "v")
    # ...but the event (as stored) carries only the lasting keys.
    assert first.actions.state_delta == {"k": "v"}
    stored = await svc.get_session(app_name=APP, user_id="ann", session_id="s1")
    assert stored is not None
    assert "temp:out" not in stored.state
    assert stored.events[0].actions.state_delta == {"k": "v"}


async def test_temp_state_is_applied_and_trimmed_once_per_append(
    svc: SessionStoreSessionService,
) -> None:
    session = await svc.create_session(app_name=APP, user_id="ann", session_id="s1")
    event = Event(invocation_id="i", author="a", actions=_delta(**{"temp:t": 1, "kept": 2}))
    with (
        mock.patch.object(svc, "_apply_temp_state", wraps=svc._apply_temp_state) as applied,
        mock.patch.object(svc, "_trim_temp_delta_state", wraps=svc._trim_temp_delta_state) as cut,
    ):
        await svc.append_event(session, event)
    assert (applied.call_count, cut.call_count) == (1, 1)
    assert (session.state["temp:t"], session.state["kept"]) == (1, 2)


async def test_get_user_state(svc: SessionStoreSessionService) -> None:
    assert await svc.get_user_state(app_name=APP, user_id="ann") == {}
    session = await svc.create_session(app_name=APP, user_id="ann")
    for n in (1, 2):
        delta = {"user:profile": {"name": "Ann"}, "user:counter": n, "local": n}
        await svc.append_event(session, Event(author="system", actions=_delta(**delta)))
    assert await svc.get_user_state(app_name=APP, user_id="ann") == {
        "profile": {"name": "Ann"},
        "counter": 2,
    }
    assert await svc.get_user_state(app_name=APP, user_id="bo") == {}
    assert await svc.get_user_state(app_name="other_app", user_id="ann") == {}


# -- events -----------------------------------------------------------------------------


async def test_bytes_in_an_event_round_trip(svc: SessionStoreSessionService) -> None:
    session = await svc.create_session(app_name=APP, user_id="ann")
    content = types.Content(
        role="user", parts=[types.Part.from_bytes(data=b"\x89PNG\x00", mime_type="image/png")]
    )
    grounding = types.GroundingMetadata(
        search_entry_point=types.SearchEntryPoint(sdk_blob=b"\x00blob")
    )
    event = Event(invocation_id="i", author="user", content=content, grounding_metadata=grounding)
    await svc.append_event(session, event)
    assert session.events[0].content == content
    read = await svc.get_session(app_name=APP, user_id="ann", session_id=session.id)
    assert read is not None
    assert len(read.events) == 1
    assert (read.events[0].content, read.events[0].grounding_metadata) == (content, grounding)


async def test_an_event_with_every_field_set_round_trips(svc: SessionStoreSessionService) -> None:
    session = await svc.create_session(app_name=APP, user_id="ann")
    event = Event(
        invocation_id="i",
        author="user",
        content=types.Content(role="user", parts=[types.Part(text="hello")]),
        turn_complete=True,
        partial=False,
        actions=EventActions(
            artifact_delta={"report.pdf": 0}, transfer_to_agent="helper", escalate=True
        ),
        long_running_tool_ids={"tool-1"},
        error_code="E1",
        error_message="failed",
        interrupted=True,
        grounding_metadata=types.GroundingMetadata(web_search_queries=["q"]),
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=3, candidates_token_count=4, total_token_count=7
        ),
        citation_metadata=types.CitationMetadata(),
        custom_metadata={"k": "v"},
        timestamp=1_700_000_000.123,
        input_transcription=types.Transcription(text="in", finished=True),
        output_transcription=types.Transcription(text="out", finished=True),
    )
    await svc.append_event(session, event)
    assert await svc.get_session(app_name=APP, user_id="ann", session_id=session.id) == session


async def test_last_update_time_follows_the_appended_event(
    svc: SessionStoreSessionService,
) -> None:
    session = await svc.create_session(app_name=APP, user_id="ann")
    created = session.last_update_time
    await svc.append_event(session, Event(invocation_id="i", author="u", timestamp=created + 10))
    assert session.last_update_time == pytest.approx(created + 10, abs=1e-6)
    read = await svc.get_session(app_name=APP, user_id="ann", session_id=session.id)
    assert read is not None
    assert read.last_update_time == pytest.approx(created + 10, abs=1e-6)
    assert read.last_update_time > created


async def test_partial_events_are_neither_kept_nor_stored(
    svc: SessionStoreSessionService,
) -> None:
    session = await svc.create_session(app_name=APP, user_id="ann")
    await svc.append_event(session, Event(author="user", partial=True))
    assert session.events == []
    read = await svc.get_session(app_name=APP, user_id="ann", session_id=session.id)
    assert read is not None
    assert read.events == []


async def test_an_event_delivered_again_is_stored_and_applied_once(
    svc: SessionStoreSessionService,
) -> None:
    session = await svc.create_session(app_name=APP, user_id="ann", session_id="dup")
    event = Event(invocation_id="i", author="user", actions=_delta(counter=1))
    for again in (event, event, event.model_copy(deep=True)):
        await svc.append_event(session, again)
    read = await svc.get_session(app_name=APP, user_id="ann", session_id="dup")
    assert read is not None
    assert [e.id for e in read.events] == [event.id]
    assert read.state["counter"] == 1


async def test_different_events_sharing_an_id_are_both_stored(
    svc: SessionStoreSessionService,
) -> None:
    session = await svc.create_session(app_name=APP, user_id="ann", session_id="ids")
    await svc.append_event(session, Event(id="same", invocation_id="a", author="user"))
    await svc.append_event(session, Event(id="same", invocation_id="b", author="agent"))
    read = await svc.get_session(app_name=APP, user_id="ann", session_id="ids")
    assert read is not None
    assert [e.author for e in read.events] == ["user", "agent"]


# -- reading events back: config and order ----------------------------------------------


async def test_get_session_config_filters_events(svc: SessionStoreSessionService) -> None:
    session = await svc.create_session(app_name=APP, user_id="ann")
    for second in range(1, 6):
        await svc.append_event(session, Event(author="user", timestamp=second))

    async def stamps(**config: Any) -> list[float]:
        got = await svc.get_session(
            app_name=APP,
            user_id="ann",
            session_id=session.id,
            config=GetSessionConfig(**config) if config else None,
        )
        assert got is not None
        return [e.timestamp for e in got.events]

    assert await stamps() == [1, 2, 3, 4, 5]
    assert await stamps(num_recent_events=0) == []
    assert await stamps(num_recent_events=3) == [3, 4, 5]
    assert await stamps(after_timestamp=4.0) == [4, 5]
    assert await stamps(after_timestamp=50.0) == []
    assert await stamps(after_timestamp=4.0, num_recent_events=3) == [4, 5]


@pytest.mark.parametrize("reverse", [False, True], ids=["ids-ascending", "ids-descending"])
async def test_tied_timestamps_come_back_ordered_by_event_id(
    svc: SessionStoreSessionService, reverse: bool
) -> None:
    """ADK's database service orders events by (timestamp, id): tied events come back
    in one stable order, whatever order they were appended in."""
    ids = ["event_a", "event_m", "event_z"]
    session = await svc.create_session(app_name=APP, user_id="ann")
    for event_id in reversed(ids) if reverse else ids:
        await svc.append_event(session, Event(author="user", id=event_id, timestamp=100.0))
    read = await svc.get_session(app_name=APP, user_id="ann", session_id=session.id)
    assert read is not None
    assert [e.id for e in read.events] == ids
    # The latest n cut the tie where the database service cuts it.
    latest = await svc.get_session(
        app_name=APP,
        user_id="ann",
        session_id=session.id,
        config=GetSessionConfig(num_recent_events=2),
    )
    assert latest is not None
    assert [e.id for e in latest.events] == ids[1:]
    last = await svc.get_session(
        app_name=APP,
        user_id="ann",
        session_id=session.id,
        config=GetSessionConfig(num_recent_events=1),
    )
    assert last is not None
    assert [e.id for e in last.events] == ids[-1:]
    # A copy without a revision marker ends with the event the staleness check takes
    # as the latest: it is current.
    read._storage_update_marker = None
    await svc.append_event(read, Event(author="user", id="event_next", timestamp=101.0))
    again = await svc.get_session(app_name=APP, user_id="ann", session_id=session.id)
    assert again is not None
    assert [e.id for e in again.events] == [*ids, "event_next"]


@pytest.fixture
def new_york_time() -> Iterator[None]:
    """The process runs in a zone that repeats an hour each autumn (POSIX only)."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is POSIX-only")
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


async def test_timestamps_in_a_repeated_local_hour_read_back_exactly(
    svc: SessionStoreSessionService, new_york_time: None
) -> None:
    # 01:00 and 01:30 local time on 2024-11-03, the second time round.
    epochs = [1_730_613_600.0, 1_730_615_400.0]
    session = await svc.create_session(app_name=APP, user_id="ann")
    for epoch in epochs:
        await svc.append_event(session, Event(author="user", timestamp=epoch))
    read = await svc.get_session(app_name=APP, user_id="ann", session_id=session.id)
    assert read is not None
    assert [e.timestamp for e in read.events] == epochs


# -- stale writers ----------------------------------------------------------------------


async def test_a_stale_session_object_is_refused_and_writes_nothing(
    svc: SessionStoreSessionService,
) -> None:
    start = _now()
    original = await svc.create_session(app_name=APP, user_id="ann")
    await svc.append_event(
        original, Event(invocation_id="inv1", author="u", timestamp=start + 1, actions=_delta(a=1))
    )
    current = await svc.get_session(app_name=APP, user_id="ann", session_id=original.id)
    assert current is not None
    await svc.append_event(
        current, Event(invocation_id="inv2", author="u", timestamp=start + 2, actions=_delta(b=2))
    )
    assert original.last_update_time < current.last_update_time
    assert len(original.events) == 1
    assert "b" not in original.state
    with pytest.raises(StaleSessionError, match="modified in storage"):
        await svc.append_event(
            original,
            Event(invocation_id="inv3", author="u", timestamp=start + 3, actions=_delta(c=3)),
        )
    final = await svc.get_session(app_name=APP, user_id="ann", session_id=original.id)
    assert final is not None
    assert [e.invocation_id for e in final.events] == ["inv1", "inv2"]
    assert (final.state["a"], final.state["b"], final.state.get("c")) == (1, 2, None)


async def test_of_two_racing_copies_exactly_one_appends(svc: SessionStoreSessionService) -> None:
    session = await svc.create_session(app_name=APP, user_id="ann")
    rounds = 8
    for n in range(rounds):
        latest = await svc.get_session(app_name=APP, user_id="ann", session_id=session.id)
        assert latest is not None
        base = latest.last_update_time + 10
        results = await asyncio.gather(
            *(
                svc.append_event(
                    latest.model_copy(deep=True),
                    Event(
                        invocation_id=f"inv{n}-{k}",
                        author="u",
                        timestamp=base + k,
                        actions=_delta(**{f"k{n}-{k}": k}),
                    ),
                )
                for k in (1, 2)
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1
        assert isinstance(errors[0], StaleSessionError)
        assert "modified in storage" in str(errors[0])
    final = await svc.get_session(app_name=APP, user_id="ann", session_id=session.id)
    assert final is not None
    assert len(final.events) == rounds
    for n in range(rounds):
        assert len([k for k in final.state if k.startswith(f"k{n}-")]) == 1


async def test_one_writer_with_tied_timestamps_is_never_stale(
    svc: SessionStoreSessionService,
) -> None:
    same = _now()
    session = await svc.create_session(app_name=APP, user_id="ann")
    await svc.append_event(session, Event(invocation_id="1", author="u", timestamp=same))
    await svc.append_event(
        session, Event(invocation_id="2", author="u", timestamp=same, actions=_delta(k=1))
    )
    await svc.append_event(session, Event(invocation_id="3", author="u", timestamp=same + 1))
    assert len(session.events) == 3


@pytest.mark.parametrize("markerless", [False, True], ids=["marker", "no-marker"])
async def test_a_current_session_whose_clock_drifted_still_appends(
    svc: SessionStoreSessionService, markerless: bool
) -> None:
    session = await svc.create_session(app_name=APP, user_id="ann", session_id="s1")
    first = Event(invocation_id="inv1", author="u", timestamp=session.last_update_time + 10)
    await svc.append_event(session, first)
    if markerless:
        session._storage_update_marker = None
    session.last_update_time -= 0.0001  # a float that did not round-trip exactly
    await svc.append_event(
        session, Event(invocation_id="inv2", author="u", timestamp=first.timestamp + 10)
    )
    read = await svc.get_session(app_name=APP, user_id="ann", session_id="s1")
    assert read is not None
    assert [e.invocation_id for e in read.events] == ["inv1", "inv2"]
