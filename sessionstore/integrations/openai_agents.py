"""The OpenAI Agents SDK's ``Session`` protocol on sessionstore (extra: ``openai-agents``).

::

    from sessionstore.integrations.openai_agents import SessionStoreSession
    result = await Runner.run(agent, "hi", session=SessionStoreSession("chat-42", store))

**Mapping.** One SDK session is one sessionstore *conversation*; each SDK item is one
*message*:

- ``session_id`` names the conversation: its continuation id is ``prefix + session_id``
  (``prefix`` defaults to ``"openai-agents:"``). Continuation ids are unique across the
  whole database, so the prefix keeps the SDK's conversations apart from others (an MCP
  server's plain-text conversations, another framework's). Two applications sharing a
  database must use different prefixes (e.g. ``prefix="billing-bot:"``) unless they
  mean to share conversations. :attr:`SessionStoreSession.continuation_id` is the full id,
  for reading the conversation with the sessionstore API
  (``store.messages.history(ContinuationId(adapter.continuation_id))``).
- ``content`` is the item as JSON text (``json.dumps``; non-ASCII kept as UTF-8, except
  that an item holding a lone surrogate is stored ASCII-escaped), so every item comes
  back exactly as JSON reads it: equal dicts, same key order, ``"\\u0000"`` and unicode
  intact. Like the SDK's own SQLite/SQLAlchemy sessions, what JSON cannot tell apart
  comes back as JSON reads it (a tuple as a list, an ``int`` key as a ``str``); a string
  holding a UTF-16 surrogate pair as two code points (which JSON would read back as one
  character) is refused.
- ``role``: the item's ``role`` when it is ``user``, ``assistant`` or ``system``;
  ``developer`` is stored as ``system``; every other item (``function_call``,
  ``function_call_output``, ``reasoning``, tool calls and outputs of any kind, items
  with unknown roles) as ``assistant``. The role is a coarse label for sessionstore
  readers; the item itself is never rebuilt from it.
- ``metadata``: ``{"source": "openai-agents", "type": ...}`` plus the item's original
  ``role`` and its ``call_id`` when they are short plain identifiers. Only such small
  facts; never the item's text.

**Owner.** ``owner`` (a sessionstore session id) binds the conversation to that session,
and each ``Runner.run`` is one turn of it (``messages.add_many(..., session_id=owner)``):
the session must exist, be active and not expired (``NotFoundError``,
``InvalidStateError``, ``SessionExpiredError``), a conversation bound to another session
refuses (``ConflictError``), and a refused call writes nothing. The session's expiry and
``sessions.delete`` / ``purge_user`` cleanup then cover the conversation. Reads check the
binding once per adapter object (``ConflictError`` for another session's conversation).
``pop_item`` and ``clear_session`` remove items even from a session that is no longer
active: they never add. The session's ``turn_count`` / ``total_tokens`` count turns
recorded, so they do not drop on ``pop_item`` or ``clear_session``.

**Turns.** The SDK's ``Runner`` calls ``add_items`` several times in one run: the run's
input first, then the items of each model response (a tool call and its output, then
the answer), so a run with one tool call makes three calls. With ``turns="per_run"``
(the default) the run's first ``add_items`` is the turn: it is checked and counted as
above, and the run's later calls append their items to the conversation without
counting (nor refusing if the session stops taking turns meanwhile: the turn was
accepted). Two runs, one of them with a tool call, leave ``turn_count == 2``. A run is
told apart by the run context the SDK passes to the session (its context-aware
``wrapper`` parameter, one per ``Runner.run``; do not pass one ``RunContextWrapper`` as
``context`` to several runs); a call without one (your own ``add_items``) is a turn of
its own. ``turns="per_call"``: every ``add_items`` is a turn (the same run: 3).

**Round trips.** ``get_items(limit)``: one (``limit`` up to 1,000; ``None`` reads the
whole conversation in pages of 1,000). ``add_items``: one, all or nothing, in the given
order. The first ``add_items`` of a conversation that does not exist yet also costs
the failed append, ``conversations.get_or_create`` (which creates it) and, with
``owner``, a ``sessions.get`` (served from the session cache on a ``SessionStore``); an
existing conversation costs nothing more, even through a new adapter object.
``pop_item`` and ``clear_session``: one transaction each. With ``owner``, the first
read, pop or clear of an adapter object costs one more (the binding check,
``conversations.get``). Reads, pops and clears never create a conversation: an absent
one reads as empty.

**Row-level security.** Pass ``store.as_user(user_id)`` as ``store``. A conversation is
visible under RLS only through a session the user owns, so ``owner`` is then required
(``InvalidInputError`` otherwise). Another user's conversation reads as empty and cannot
be written (``PermissionDeniedError`` / ``NotFoundError``).

**Write-behind.** With ``write_behind=True`` (a :class:`~sessionstore.SessionStore` only,
not a :class:`~sessionstore.UserView`, which has no write-behind queue), ``add_items``
accepts the items into the store's queue with ``messages.enqueue`` and returns: it waits
only when the queue is full. The conversation is created durably (awaited) by the first
call (and, with ``owner``, each call checks the owner from the session cache).
``get_items`` in the same process sees queued items at once (read-your-writes, also
through other adapter objects on the same store); ``pop_item`` and ``clear_session``
first make the store's queue durable (``flush``). Another process sees the items only
once the writer has committed them (within ``max_delay`` of being queued, or at
``store.flush()`` / ``store.close()``); if this process dies first they are lost
(``spill_path`` covers only a ``close()`` while the database is down). Write-behind
trades guarantees for latency: a call's items may land in different writer batches
(not all or nothing), they count no turn on ``owner``, the owner's liveness is checked
when ``add_items`` is called but not again at write time, and an existing unbound
conversation is not bound to ``owner``.

**Not supported.** The SDK's compaction hooks (``run_compaction``, compaction
snapshots); token counts per item (items carry none); per-item timestamps beyond the
message's ``created_at``. Of the run context (``wrapper``) only its identity is used.

Bad input (a non-string or empty ``session_id``, items that are not a list of dicts,
items JSON cannot represent, a bad ``limit``) raises
:class:`~sessionstore.InvalidInputError` naming the field, before anything is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import weakref
from typing import Any, Final, Literal, cast
from uuid import UUID

try:
    from agents.items import TResponseInputItem
    from agents.memory.session_settings import (
        SessionSettings,
        coerce_session_settings,
        resolve_session_limit,
    )
    from agents.run_context import RunContextWrapper
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        "sessionstore.integrations.openai_agents needs the OpenAI Agents SDK: "
        "install the `openai-agents` package (sessionstore's `openai-agents` extra)"
    ) from exc

from .. import validation as v
from ..errors import InvalidInputError, NotFoundError
from ..lifecycle import require_live
from ..models import ContinuationId, Message, MessageRole
from ..store import SessionStore, UserView
from .common import append_turn, check_binding, latest

__all__ = ["DEFAULT_PREFIX", "SessionStoreSession"]

logger = logging.getLogger("sessionstore")

#: The default namespace of the SDK's conversations among all continuation ids.
DEFAULT_PREFIX: Final = "openai-agents:"
#: The ``source`` every stored item's metadata carries.
SOURCE: Final = "openai-agents"

_ROLES: Final = {
    "user": MessageRole.USER,
    "assistant": MessageRole.ASSISTANT,
    "system": MessageRole.SYSTEM,
    "developer": MessageRole.SYSTEM,
}
# Metadata carries only short plain identifiers (types, roles, call ids): anything
# else could be private text or break jsonb's rules.
_FACT = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


class SessionStoreSession:
    """An OpenAI Agents SDK session (``agents.memory.Session``) kept in sessionstore.

    ``session_id`` is the SDK's session id (a non-empty string; with ``prefix`` at most
    255 characters); ``store`` a :class:`~sessionstore.SessionStore`, or a
    :class:`~sessionstore.UserView` from ``store.as_user(...)`` to run under RLS (then
    ``owner`` is required). Keyword options:

    - ``owner``: a sessionstore session id the conversation belongs to (see
      :mod:`sessionstore.integrations.openai_agents`: expiry, turns, RLS, cleanup).
    - ``prefix``: the namespace before ``session_id`` in the continuation id (default
      ``"openai-agents:"``; ``""`` uses ``session_id`` as it is).
    - ``write_behind``: append through the store's write-behind queue (SessionStore only).
    - ``turns``: what counts one turn on ``owner``: ``"per_run"`` (default) one per
      ``Runner.run``, ``"per_call"`` every ``add_items`` (see
      :mod:`sessionstore.integrations.openai_agents`).
    - ``session_settings``: the SDK's :class:`~agents.memory.SessionSettings` (or a dict);
      its ``limit`` is the default of :meth:`get_items`.

    Safe to use from many tasks at once; keep one object per conversation and request.
    Errors are sessionstore's (:class:`~sessionstore.SessionStoreError` subclasses).
    """

    session_id: str
    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        store: SessionStore | UserView,
        *,
        owner: UUID | str | None = None,
        prefix: str = DEFAULT_PREFIX,
        write_behind: bool = False,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        turns: Literal["per_run", "per_call"] = "per_run",
    ) -> None:
        sid = v.identifier(session_id, "session_id")
        v.text(prefix, "prefix")
        if len(prefix) + len(sid) > v.MAX_IDENTIFIER:
            raise InvalidInputError(
                "session_id",
                f"must be at most {v.MAX_IDENTIFIER - len(prefix)} characters"
                f" (with the prefix, at most {v.MAX_IDENTIFIER})",
            )
        if not isinstance(store, SessionStore | UserView):
            raise InvalidInputError(
                "store", f"must be a SessionStore or a UserView, got {type(store).__name__}"
            )
        if not isinstance(write_behind, bool):
            raise InvalidInputError("write_behind", "must be a bool")
        if turns not in ("per_run", "per_call"):
            raise InvalidInputError("turns", "must be 'per_run' or 'per_call'")
        if write_behind and not isinstance(store, SessionStore):
            raise InvalidInputError(
                "write_behind",
                "needs a SessionStore: a UserView (as_user) has no write-behind queue",
            )
        self._owner = None if owner is None else v.uuid(owner, "owner")
        if isinstance(store, UserView) and self._owner is None:
            raise InvalidInputError(
                "owner",
                "is required with a UserView: under RLS a conversation is visible only"
                " through a session the user owns",
            )
        try:
            settings = (
                SessionSettings()
                if session_settings is None
                else coerce_session_settings(session_settings)
            )
        except (TypeError, ValueError):
            raise InvalidInputError(
                "session_settings", "must be a SessionSettings or a dict of its fields"
            ) from None
        self.session_id = sid
        self.session_settings = settings
        self._store = store
        self._write_behind = write_behind
        self._cid = ContinuationId(prefix + sid)
        # Whether the conversation is known to exist and be this owner's (or unbound):
        # set once per object, so later calls skip the check.
        self._verified = False
        # Keeps one object's concurrent write-behind calls from interleaving their items.
        self._enqueue_lock = asyncio.Lock()
        # The runs (the SDK's run contexts) whose turn is counted; None: every call counts.
        self._runs: weakref.WeakSet[RunContextWrapper[Any]] | None = (
            weakref.WeakSet() if turns == "per_run" else None
        )

    @property
    def continuation_id(self) -> ContinuationId:
        """The conversation's continuation id (``prefix + session_id``)."""
        return self._cid

    @property
    def owner(self) -> UUID | None:
        """The sessionstore session the conversation is bound to, if any."""
        return self._owner

    def __repr__(self) -> str:
        return (
            f"SessionStoreSession(continuation_id={str(self._cid)!r}, owner={self._owner},"
            f" write_behind={self._write_behind},"
            f" turns={'per_call' if self._runs is None else 'per_run'!r})"
        )

    async def get_items(
        self, limit: int | None = None, *, wrapper: RunContextWrapper[Any] | None = None
    ) -> list[TResponseInputItem]:
        """The latest ``limit`` items, oldest first; all of them when ``limit`` is ``None``
        (and ``session_settings.limit`` is ``None``). ``limit=0`` gives ``[]``; a
        negative or non-integer ``limit`` raises ``InvalidInputError``.

        A conversation that does not exist yet reads as ``[]`` (nothing is created). A
        stored message that is not a JSON object (written by something else) is skipped
        and logged, as the SDK's own sessions do (it still counts toward ``limit``).
        ``wrapper`` (the SDK's run context, see :meth:`add_items`) is not used here.
        """
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise InvalidInputError(
                "limit", f"must be an integer or None, got {type(limit).__name__}"
            )
        wanted = resolve_session_limit(limit, self.session_settings)
        if wanted is not None and (not isinstance(wanted, int) or wanted < 0):
            raise InvalidInputError("limit", "must be None or an integer >= 0")
        if wanted == 0 or not await self._readable():
            return []
        try:
            stored = await latest(self._store, self._cid, wanted)
        except NotFoundError:
            return []
        return [item for item in map(_decode, stored) if item is not None]

    async def add_items(
        self, items: list[TResponseInputItem], *, wrapper: RunContextWrapper[Any] | None = None
    ) -> None:
        """Append ``items`` in order: one round trip, all or nothing (a new conversation,
        ``owner``, turns and write-behind: see :mod:`sessionstore.integrations.openai_agents`).
        ``wrapper``: the run the SDK's ``Runner`` calls from; a run's first call counts
        its turn.

        ``items`` must be a list of dicts that JSON can represent (no NaN or infinity, no
        cycles); otherwise ``InvalidInputError`` names the item (``items[2]``) and
        nothing is written. An empty list writes nothing and sends nothing.
        """
        rows = _rows(items)
        if not rows:
            return
        if self._write_behind:
            await self._enqueue(rows)
            return
        runs = self._runs
        counted = runs is not None and wrapper is not None and wrapper in runs
        await append_turn(self._store, self._cid, rows, self._owner, turn=not counted)
        if runs is not None and wrapper is not None:
            runs.add(wrapper)
        self._verified = True

    async def pop_item(
        self, *, wrapper: RunContextWrapper[Any] | None = None
    ) -> TResponseInputItem | None:
        """Remove the latest item and return it; ``None`` when there is none (or no
        conversation yet). In write-behind mode the queue is made durable first.

        A latest message that is not a JSON object (written by something else) is
        removed, logged and skipped, and the next one is popped — as the SDK's own
        sessions do. ``wrapper`` (the SDK's run context) is not used here.
        """
        if not await self._readable():
            return None
        while True:
            try:
                message = await self._store.messages.pop(self._cid)
            except NotFoundError:
                return None
            if message is None:
                return None
            item = _decode(message)
            if item is not None:
                return item

    async def clear_session(self, *, wrapper: RunContextWrapper[Any] | None = None) -> None:
        """Remove every item. The conversation itself (and its binding to ``owner``) is
        kept, so the next :meth:`add_items` continues it from ``seq`` 1. No conversation
        yet: nothing to do. In write-behind mode the queue is made durable first.
        ``wrapper`` (the SDK's run context) is not used here."""
        if not await self._readable():
            return
        try:
            await self._store.messages.clear(self._cid)
        except NotFoundError:
            return

    async def _readable(self) -> bool:
        """Whether to read the conversation: with ``owner``, check once per object that
        it is unbound or bound to ``owner`` (``ConflictError`` otherwise). ``False``
        when it does not exist (or is invisible under RLS)."""
        if self._owner is None or self._verified:
            return True
        self._verified = await check_binding(self._store, self._cid, self._owner)
        return self._verified

    async def _enqueue(self, rows: list[tuple[MessageRole, str, dict[str, str]]]) -> None:
        store = self._store
        assert isinstance(store, SessionStore)  # checked in __init__
        if self._owner is not None:
            require_live(await store.sessions.get(self._owner), "add items to")
        if not self._verified:
            # Enqueued messages name the conversation by its continuation id, so it must
            # exist before the writer's batch resolves it.
            await store.conversations.get_or_create(self._cid, session_id=self._owner)
            self._verified = True
        async with self._enqueue_lock:
            for role, content, metadata in rows:
                await store.messages.enqueue(self._cid, role, content, metadata=metadata)


def _rows(items: object) -> list[tuple[MessageRole, str, dict[str, str]]]:
    """``items`` as ``(role, content, metadata)`` rows, every item checked first."""
    if not isinstance(items, list):
        raise InvalidInputError("items", f"must be a list of dicts, got {type(items).__name__}")
    rows: list[tuple[MessageRole, str, dict[str, str]]] = []
    for i, item in enumerate(items):
        field = f"items[{i}]"
        if not isinstance(item, dict):
            raise InvalidInputError(field, f"must be a dict, got {type(item).__name__}")
        rows.append((_role(item), _encode(item, field), _facts(item)))
    return rows


def _encode(item: dict[str, Any], field: str) -> str:
    try:
        text = json.dumps(item, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        # TypeError: a value JSON has no form for; ValueError: NaN/infinity, a cycle, an
        # int too long to print; RecursionError: absurd nesting.
        raise InvalidInputError(
            field,
            "must be JSON-serialisable (str keys; dict, list, str, int, finite float,"
            " bool, None values; no cycles)",
        ) from None
    # json.dumps escapes NUL (and every control character) itself; a lone surrogate
    # would pass through raw and is not UTF-8: store that item ASCII-escaped instead.
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            # JSON reads an escaped high+low surrogate pair back as the one character it
            # encodes, so a string holding such a pair as two code points cannot come back.
            # (Raw, adjacent in the text means adjacent in one string.)
            if _SURROGATE_PAIR.search(text):
                raise InvalidInputError(
                    field,
                    "holds a UTF-16 surrogate pair as two code points, which JSON reads"
                    " back as one character (decode the string first)",
                ) from None
            text = json.dumps(item, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text


def _role(item: dict[str, Any]) -> MessageRole:
    role = item.get("role")
    kind = item.get("type", "message")
    if kind == "message" and isinstance(role, str):
        return _ROLES.get(role, MessageRole.ASSISTANT)
    return MessageRole.ASSISTANT


def _facts(item: dict[str, Any]) -> dict[str, str]:
    facts = {"source": SOURCE}
    kind = item.get("type", "message" if "role" in item else None)
    for key, value in (
        ("type", kind),
        ("role", item.get("role")),
        ("call_id", item.get("call_id")),
    ):
        if isinstance(value, str) and _FACT.fullmatch(value):
            facts[key] = value
    return facts


def _decode(message: Message) -> TResponseInputItem | None:
    if message.covers_through is not None:  # a summary (messages.compact): plain text
        return cast(TResponseInputItem, {"role": message.role.value, "content": message.content})
    try:
        item = json.loads(message.content)
    except ValueError:
        item = None
    if not isinstance(item, dict):
        logger.warning(
            "openai_agents: message %s of conversation %s is not a JSON object; skipped",
            message.id,
            message.conversation_id,
        )
        return None
    return cast(TResponseInputItem, item)
