"""ADK events as sessionstore messages: an event written as one message (its JSON as
ADK writes it, a few facts in the metadata, its state delta split by scope), and the
event messages a ``GetSessionConfig`` asks for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from google.adk.events.event import Event
from google.adk.sessions.base_session_service import GetSessionConfig
from pydantic_core import PydanticSerializationError

from ...errors import InvalidInputError
from ...models import Message, MessageRole
from ...repositories.states import StateDeltas
from .state import split

__all__ = ["EVENT_KIND", "EventWrite", "order", "select", "stamp"]

#: ``Message.metadata["kind"]`` of a message that holds an ADK event.
EVENT_KIND = "adk_event"


def stamp(message: Message) -> float | None:
    """The event timestamp of a message holding an ADK event, else None."""
    meta = message.metadata
    value = meta.get("timestamp")
    if meta.get("kind") != EVENT_KIND or not isinstance(value, int | float):
        return None
    return float(value)


class EventWrite(NamedTuple):
    """An event as it is written: the message, and its state deltas (checked)."""

    role: MessageRole
    content: str
    metadata: dict[str, Any]
    tokens: int | None
    deltas: StateDeltas

    @classmethod
    def of(cls, event: Event) -> EventWrite:
        """The event's message and deltas; ``InvalidInputError`` (``event``, or the
        delta's scope) for what cannot be stored, before anything is sent."""
        try:
            # As ADK's own stores write it; exclude_none keeps None inside dicts.
            content = event.model_dump_json(exclude_none=True)
        except PydanticSerializationError:
            raise InvalidInputError(
                "event", "cannot be serialised to JSON (e.g. text with a lone surrogate)"
            ) from None
        delta: dict[str, Any] = {}
        if event.actions.state_delta:
            # The delta exactly as the event's JSON holds it (ADK's fallback included).
            delta = event.actions.model_dump(mode="json", include={"state_delta"})["state_delta"]
        parts = split(delta)
        usage = event.usage_metadata
        tokens = None if usage is None else usage.total_token_count
        return cls(
            role=MessageRole.USER if event.author == "user" else MessageRole.ASSISTANT,
            content=content,
            metadata={
                "kind": EVENT_KIND,
                "event_id": event.id,
                "invocation_id": event.invocation_id,
                "author": event.author,
                "timestamp": event.timestamp,
            },
            tokens=tokens if tokens is not None and tokens >= 0 else None,
            deltas=StateDeltas.of(
                parts.app,
                parts.user,
                parts.session,
                fields=(
                    "event.actions.state_delta[app:]",
                    "event.actions.state_delta[user:]",
                    "event.actions.state_delta",
                ),
            ),
        )


def order(message: Message) -> tuple[float, str]:
    """Where an event message sorts: by its event's timestamp, ties by event id (the
    order of ADK's database service, whose stale-session check takes the last event in
    that order as the latest one)."""
    return stamp(message) or 0.0, str(message.metadata.get("event_id", ""))


def select(messages: Sequence[Message], config: GetSessionConfig | None) -> list[Message]:
    """The event messages ``config`` asks for, in :func:`order`: with
    ``after_timestamp``, those at or after it; with ``num_recent_events``, the latest n
    of those (0: none). Messages that hold no event are left out; two events with the
    same timestamp and id keep the order they were appended in."""
    events = sorted((m for m in messages if stamp(m) is not None), key=order)
    if config is None:
        return events
    after = config.after_timestamp
    if after is not None:
        events = [m for m in events if order(m)[0] >= after]
    if config.num_recent_events is not None:
        events = events[-config.num_recent_events :] if config.num_recent_events else []
    return events
