"""What the framework adapters share: a framework call's messages appended as one turn
(the conversation created on first use), and a conversation read back from its end."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from uuid import UUID

from .. import validation as v
from ..errors import ConflictError, NotFoundError
from ..lifecycle import require_live
from ..models import ContinuationId, Message, NewMessage
from ..store import SessionStore, UserView

__all__ = ["Scope", "append_turn", "check_binding", "create_conversation", "latest"]

#: Where an adapter works: the service path, or one user under row-level security.
Scope = SessionStore | UserView


async def check_binding(scope: Scope, ref: ContinuationId, owner: UUID | None) -> bool:
    """Whether the conversation exists (``False`` when it does not, or RLS hides it); with
    ``owner``, it must be unbound or bound to that session — ``ConflictError`` otherwise,
    so that an adapter bound to one session never reads or clears another's."""
    try:
        conversation = await scope.conversations.get(ref)
    except NotFoundError:
        return False
    if owner is not None and conversation.session_id not in (None, owner):
        raise ConflictError(f"conversation {str(ref)!r} belongs to another session, not {owner}")
    return True


async def create_conversation(scope: Scope, ref: ContinuationId, owner: UUID | None) -> None:
    """Get-or-create the conversation, bound to ``owner`` if given. A session that takes
    no turns is refused first (``NotFoundError``, ``SessionExpiredError``,
    ``InvalidStateError``), so that nothing — not even an empty conversation — is written
    for it."""
    if owner is not None:
        require_live(await scope.sessions.get(owner), "add a turn to")
    await scope.conversations.get_or_create(ref, session_id=owner)


async def append_turn(
    scope: Scope,
    ref: ContinuationId,
    rows: Sequence[NewMessage],
    owner: UUID | None,
    *,
    exists: bool | None = None,
    turn: bool = True,
) -> None:
    """Append ``rows`` in one round trip, all or nothing, as one turn of ``owner`` when
    given (``messages.add_many``'s rules). A conversation that does not exist is created
    (:func:`create_conversation`) and the append sent again; ``exists=False`` (a read just
    found none) creates it first and saves the failed append.

    ``turn=False``: the rows continue a turn an earlier append counted (and whose checks
    of ``owner`` passed), so they are appended to the conversation without counting one;
    if the conversation is gone meanwhile, this is a turn of its own after all."""
    if not turn and exists is not False:
        try:
            await scope.messages.add_many(ref, rows)
            return
        except NotFoundError:
            pass
    if exists is False:
        await create_conversation(scope, ref, owner)
        await scope.messages.add_many(ref, rows, session_id=owner)
        return
    try:
        await scope.messages.add_many(ref, rows, session_id=owner)
    except NotFoundError:
        # The conversation is new (or gone). A missing owner raises NotFoundError again,
        # from the creation's check.
        await create_conversation(scope, ref, owner)
        await scope.messages.add_many(ref, rows, session_id=owner)


async def latest(
    scope: Scope,
    ref: ContinuationId,
    want: int | None,
    *,
    first_page: int | None = None,
    enough: Callable[[list[Message]], bool] | None = None,
    include_compacted: bool = False,
) -> list[Message]:
    """The latest ``want`` messages (all of them when ``None``), oldest first, read in
    pages of up to 1,000 backwards from the end; ``first_page`` sizes the first page
    (when fewer are likely needed) and ``enough(page)`` stops early once a page reaches
    back far enough. ``NotFoundError`` if the conversation does not exist. Pages are
    separate reads, not one snapshot. ``include_compacted``: every stored message, not
    the compacted view (see ``messages.history``)."""
    if want == 0:
        return []
    pages: list[list[Message]] = []
    held = 0
    size = first_page or (v.MAX_LIMIT if want is None else min(want, v.MAX_LIMIT))
    before: int | None = None
    while True:
        page = await scope.messages.history(
            ref, limit=size, before=before, include_compacted=include_compacted
        )
        pages.append(page)
        held += len(page)
        if (
            len(page) < size
            or page[0].seq <= 1
            or page[0].covers_through is not None  # a compacted view's first: its summary
            or (want is not None and held >= want)
            or (enough is not None and enough(page))
        ):
            break
        before = page[0].seq
        size = v.MAX_LIMIT if want is None else min(want - held, v.MAX_LIMIT)
    return [m for page in reversed(pages) for m in page]
