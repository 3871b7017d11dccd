"""LangGraph's checkpointer on sessionstore: :class:`SessionStoreSaver`, a
``BaseCheckpointSaver`` keeping a graph's threads in PostgreSQL (extra
``sessionstore[langgraph]``)::

    saver = SessionStoreSaver(store)  # or SessionStoreSaver(store.as_user(user_id))
    graph = builder.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "chat-1", "session_id": str(session.id)}}
    await graph.ainvoke({"messages": [("user", "hi")]}, config)

What maps where:

- a LangGraph **thread** (``thread_id``) is a row of ``langgraph_threads``, bound to the
  sessionstore **session** named by ``config["configurable"]["session_id"]`` on its
  first write (optional on the service path: a thread of no session; required under
  ``as_user``). It goes with its session: ``sessions.delete``, ``cleanup_expired`` and
  ``purge_user`` delete its checkpoints too. Writing to a thread whose session has
  expired or is not active raises what a turn would (``SessionExpiredError``,
  ``InvalidStateError``); naming another session than the thread's raises
  ``ConflictError``. With sliding expiry configured, each checkpoint moves the
  session's ``expires_at`` forward, as a turn does.
- a **checkpoint** is a row of ``langgraph_checkpoints``; its channel values that are
  not plain scalars are stored once per version in ``langgraph_blobs``, and tasks'
  pending writes in ``langgraph_writes``. The messages of a LangGraph conversation live
  in its checkpoints (the graph's state), not in sessionstore's ``messages`` table.
- under ``store.as_user(user)`` every call runs under row-level security: a user reaches
  only the threads of their own sessions; another user's thread reads as absent and
  cannot be written (``ConflictError``).

Round trips: ``aput``, ``aput_writes`` and ``aget_tuple`` take one each (``aput`` and
``aput_writes`` three or four on a thread's first write, which creates it), ``alist``
one — on the service path; under ``as_user`` each call is a transaction of its own
(``BEGIN``, the user's claims, the statement, ``COMMIT``), as every call under row-level
security is. Nothing holds a lock in the process: calls run concurrently on the store's
pool, behind a transaction pooler too. The synchronous methods are not offered (use the
graph's async API: ``ainvoke``, ``astream``).

Extended capabilities: ``adelete_for_runs`` (checkpoints whose metadata has the
``run_id``), ``acopy_thread`` (the target bound to the source's session) and ``aprune``
(``"keep_latest"`` keeps each namespace's latest checkpoint with its writes, and refuses,
deleting nothing, threads that use a ``DeltaChannel``; ``"delete"`` deletes every
checkpoint but keeps the thread and its session binding).
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, NoReturn
from uuid import UUID

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import _DeltaSnapshot

from .. import validation as v
from ..errors import InvalidInputError
from ..repositories.checkpoints import Blob, StoredCheckpoint, Write
from ..store import SessionStore, UserView
from .common import Scope

__all__ = ["SessionStoreSaver"]

_STRATEGIES = ("keep_latest", "delete")
# A btree entry holds at most 2704 bytes (a third of a page): the text of a row's primary
# key, with room for the entry's and its columns' headers and alignment, stays below this.
_MAX_KEY_BYTES = 2600
# Metadata keys a DeltaChannel leaves on the checkpoints of its threads.
_DELTA_KEYS = ("counters_since_delta_snapshot", "delta_writes_versioned")


class SessionStoreSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer on sessionstore (the module docstring has the mapping).

    ``store``: a :class:`~sessionstore.SessionStore` (the service path) or a
    :class:`~sessionstore.UserView` (``store.as_user(user)``: row-level security). The
    saver does not own the store and does not close it. ``serde``: LangGraph's
    serializer for channel values and writes (its default when ``None``).
    """

    def __init__(self, store: Scope, *, serde: SerializerProtocol | None = None) -> None:
        if not isinstance(store, SessionStore | UserView):
            raise InvalidInputError(
                "store", "must be a SessionStore or a UserView (store.as_user(...))"
            )
        super().__init__(serde=serde)
        self._checkpoints = store._checkpoints
        self._scoped = isinstance(store, UserView)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``), or the thread's latest
        in the namespace; ``None`` when there is none (or it is another user's)."""
        thread_id, namespace = _thread(config), _namespace(config)
        checkpoint_id = _optional_id(get_checkpoint_id(config), "checkpoint_id")
        stored = await self._checkpoints.get(thread_id, namespace, checkpoint_id)
        return None if stored is None else self._tuple(stored)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first: of ``config``'s thread (and namespace and id, when
        it names them; every thread the caller can see when ``config`` is ``None``),
        whose metadata contains ``filter``, before ``before``'s checkpoint, at most
        ``limit``. Read in one round trip."""
        configurable = {} if config is None else _configurable(config)
        thread_id = None
        if configurable.get("thread_id") is not None:
            thread_id = _thread_id(configurable["thread_id"], "thread_id")
        namespace = configurable.get("checkpoint_ns")
        rows = await self._checkpoints.search(
            thread_id=thread_id,
            checkpoint_ns=None if namespace is None else v.text(namespace, "checkpoint_ns"),
            checkpoint_id=_optional_id(configurable.get("checkpoint_id"), "checkpoint_id"),
            metadata=None if filter is None else _metadata_json(filter, "filter"),
            before=None if before is None else _before(before),
            limit=None if limit is None else v.non_negative_int(limit, "limit"),
        )
        for stored in rows:
            yield self._tuple(stored)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint`` (child of ``config``'s checkpoint, if it names one) with
        the values of its ``new_versions``; one round trip once the thread exists."""
        thread_id, namespace = _thread(config), _namespace(config)
        session_id = self._session(config)
        parent = _optional_id(get_checkpoint_id(config), "checkpoint_id")
        checkpoint_id = v.identifier(checkpoint["id"], "checkpoint.id")
        inline = dict(checkpoint["channel_values"])
        values: dict[str, Any] = {}
        for channel, value in checkpoint["channel_values"].items():
            if isinstance(value, _DeltaSnapshot) or not (
                value is None or isinstance(value, str | int | float | bool)
            ):
                values[channel] = inline.pop(channel)
        blobs = [
            Blob(channel, str(version), *self.serde.dumps_typed(values[channel]))
            for channel, version in new_versions.items()
            if channel in values
        ]
        _fit_key(thread_id=thread_id, checkpoint_ns=namespace, **{"checkpoint.id": checkpoint_id})
        for blob in blobs:
            _fit_key(
                thread_id=thread_id,
                checkpoint_ns=namespace,
                new_versions=blob.channel + blob.version,
            )
        stored_metadata = get_serializable_checkpoint_metadata(config, metadata)
        delta = any(isinstance(value, _DeltaSnapshot) for value in values.values()) or any(
            key in stored_metadata for key in _DELTA_KEYS
        )
        await self._checkpoints.put(
            thread_id,
            session_id,
            namespace,
            checkpoint_id,
            parent,
            self.serde.dumps_typed({**checkpoint, "channel_values": inline}),
            json.dumps({k: str(ver) for k, ver in checkpoint["channel_versions"].items()}),
            _metadata_json(stored_metadata, "metadata"),
            delta=delta,
            blobs=blobs,
        )
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": namespace,
                "checkpoint_id": checkpoint_id,
            }
        }

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes for ``config``'s checkpoint in one round trip.
        Special writes (an error, an interrupt, ...) replace what the task stored before
        under the same index; the others are kept as first stored."""
        thread_id, namespace = _thread(config), _namespace(config)
        session_id = self._session(config)
        checkpoint_id = _optional_id(get_checkpoint_id(config), "checkpoint_id")
        if checkpoint_id is None:
            raise InvalidInputError("checkpoint_id", "writes need the checkpoint they belong to")
        task = v.identifier(task_id, "task_id")
        _fit_key(
            thread_id=thread_id, checkpoint_ns=namespace, checkpoint_id=checkpoint_id, task_id=task
        )
        rows = [
            Write(WRITES_IDX_MAP.get(channel, idx), channel, *self.serde.dumps_typed(value))
            for idx, (channel, value) in enumerate(writes)
        ]
        await self._checkpoints.put_writes(
            thread_id,
            session_id,
            namespace,
            checkpoint_id,
            task,
            str(v.text(task_path, "task_path")),
            rows,
            replace=all(channel in WRITES_IDX_MAP for channel, _ in writes),
        )

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete the thread with every checkpoint and write (nothing if it is absent)."""
        await self._checkpoints.delete_thread(_thread_id(thread_id, "thread_id"))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints written by the runs ``run_ids`` (their metadata's
        ``run_id``), with their writes, in one transaction."""
        ids = _strings(run_ids, "run_ids")
        if ids:
            await self._checkpoints.delete_runs(ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of the source thread to the target, bound to
        the source's session; nothing when the source does not exist."""
        source = _thread_id(source_thread_id, "source_thread_id")
        target = _thread_id(target_thread_id, "target_thread_id")
        await self._checkpoints.copy_thread(source, target)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: keep only each namespace's latest checkpoint (and its
        writes) of every thread; ``NotImplementedError``, with nothing deleted, if one
        uses a ``DeltaChannel``. ``"delete"``: delete every checkpoint of the threads."""
        ids = _strings(thread_ids, "thread_ids")
        if strategy not in _STRATEGIES:
            raise InvalidInputError("strategy", f"must be one of {', '.join(_STRATEGIES)}")
        if not ids:
            return
        delta = await self._checkpoints.prune(ids, keep_latest=strategy == "keep_latest")
        if delta:
            raise NotImplementedError(
                f"keep_latest can't prune threads that use a DeltaChannel: {', '.join(delta)}"
            )

    def get_next_version(self, current: str | None, channel: None) -> str:
        """A new version above ``current``, with a random tail: two branches of one
        thread (a fork from an old checkpoint) never store different values under one
        version."""
        number = 0 if current is None else int(str(current).split(".")[0])
        return f"{number + 1:032}.{random.random():016}"

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Not offered: use the graph's async API (``ainvoke``, ``astream``)."""
        _sync_only()

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Not offered: use the graph's async API (``ainvoke``, ``astream``)."""
        _sync_only()

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Not offered: use the graph's async API (``ainvoke``, ``astream``)."""
        _sync_only()

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Not offered: use the graph's async API (``ainvoke``, ``astream``)."""
        _sync_only()

    def _session(self, config: RunnableConfig) -> UUID | None:
        given = _configurable(config).get("session_id")
        if given is None:
            if self._scoped:
                raise InvalidInputError(
                    "session_id",
                    "a thread written under as_user needs its session:"
                    " config['configurable']['session_id']",
                )
            return None
        return v.uuid(given, "session_id")

    def _tuple(self, stored: StoredCheckpoint) -> CheckpointTuple:
        checkpoint: Checkpoint = self.serde.loads_typed((stored.type, stored.data))
        values = dict(checkpoint.get("channel_values") or {})
        for channel, (kind, data) in stored.blobs.items():
            if kind != "empty" and data is not None:
                values[channel] = self.serde.loads_typed((kind, data))
        checkpoint["channel_values"] = values
        writes = sorted(stored.writes, key=lambda w: writes_sort_key(w.task_path, w.task_id, w.idx))
        keys = {"thread_id": stored.thread_id, "checkpoint_ns": stored.checkpoint_ns}
        parent = stored.parent_checkpoint_id
        return CheckpointTuple(
            {"configurable": {**keys, "checkpoint_id": stored.checkpoint_id}},
            checkpoint,
            json.loads(stored.metadata),
            None if parent is None else {"configurable": {**keys, "checkpoint_id": parent}},
            [(w.task_id, w.channel, self.serde.loads_typed((w.type, w.data))) for w in writes],
        )


def _sync_only() -> NoReturn:
    raise NotImplementedError(
        "SessionStoreSaver is asynchronous: use the graph's async API (ainvoke, astream)"
    )


def _configurable(config: RunnableConfig) -> Mapping[str, Any]:
    configurable = config.get("configurable") if isinstance(config, Mapping) else None
    if not isinstance(configurable, Mapping):
        raise InvalidInputError("config", "must be a mapping with a 'configurable' mapping")
    return configurable


def _thread(config: RunnableConfig) -> str:
    return _thread_id(_configurable(config).get("thread_id"), "thread_id")


def _thread_id(value: object, field: str) -> str:
    if value is None:
        raise InvalidInputError(field, "is required (config['configurable']['thread_id'])")
    if isinstance(value, UUID | int) and not isinstance(value, bool):
        value = str(value)
    return v.identifier(value, field)


def _namespace(config: RunnableConfig) -> str:
    return str(v.text(_configurable(config).get("checkpoint_ns", ""), "checkpoint_ns"))


def _optional_id(value: object, field: str) -> str | None:
    return None if value is None else v.identifier(value, field)


def _fit_key(**parts: str) -> None:
    """Refuse, naming its longest part, a primary key the index could not hold (the
    server would refuse the row, after it was sent)."""
    sizes = {field: len(text.encode("utf-8", "surrogatepass")) for field, text in parts.items()}
    if sum(sizes.values()) > _MAX_KEY_BYTES:
        longest = max(sizes, key=sizes.__getitem__)
        raise InvalidInputError(
            longest,
            f"too long: {' + '.join(parts)} must be at most {_MAX_KEY_BYTES} bytes as UTF-8",
        )


def _before(config: object) -> str:
    # A before naming no checkpoint: AsyncPostgresSaver lists nothing, InMemorySaver
    # everything; refused rather than guessed.
    configurable = config.get("configurable") if isinstance(config, Mapping) else None
    checkpoint_id = configurable.get("checkpoint_id") if isinstance(configurable, Mapping) else None
    if checkpoint_id is None:
        raise InvalidInputError("before", "must be a config naming a checkpoint_id")
    return v.identifier(checkpoint_id, "before")


def _strings(values: object, field: str) -> list[str]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise InvalidInputError(field, "must be a sequence of ids, not a single one")
    return [_thread_id(item, field) for item in values]


def _metadata_json(value: object, field: str) -> str:
    """Metadata as jsonb text: JSON values only, no NUL in any string (jsonb has none),
    nested and sized within the store's bounds for metadata."""
    if not isinstance(value, Mapping):
        raise InvalidInputError(field, "must be a mapping")
    # Depth-first with its depth, so that a cycle or a hostile depth is refused within
    # MAX_METADATA_DEPTH steps (json.dumps would recurse out of the stack, and a cycle
    # kept this walk going forever); values shared along many paths are counted on each,
    # as json.dumps writes them, so the walk ends within the size bound too.
    pending: list[tuple[object, int]] = [(value, 1)]
    visited = 0
    while pending:
        item, depth = pending.pop()
        visited += 1
        if visited > v.MAX_METADATA_BYTES:
            raise InvalidInputError(field, f"must be at most {v.MAX_METADATA_BYTES} bytes as JSON")
        if isinstance(item, str) and "\x00" in item:
            raise InvalidInputError(field, "must not contain NUL (\\x00) characters")
        if not isinstance(item, Mapping | list | tuple):
            continue
        if depth > v.MAX_METADATA_DEPTH:
            raise InvalidInputError(field, f"nests deeper than {v.MAX_METADATA_DEPTH} levels")
        children = [*item.keys(), *item.values()] if isinstance(item, Mapping) else item
        pending.extend((child, depth + 1) for child in children)
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            field, f"must hold JSON values only: {type(exc).__name__}"
        ) from None
    checked = str(v.text(text, field))  # a lone surrogate: refused before encoding
    if len(checked) > v.MAX_METADATA_BYTES or len(checked.encode()) > v.MAX_METADATA_BYTES:
        raise InvalidInputError(field, f"must be at most {v.MAX_METADATA_BYTES} bytes as JSON")
    return checked
