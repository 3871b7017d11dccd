"""LangGraph's own conformance suite for checkpointers
(``langgraph-checkpoint-conformance``'s ``validate``) against ``SessionStoreSaver`` on
the real PostgreSQL under test — every base capability and every extended one the saver
claims — on the service path and under ``as_user`` (row-level security, every thread
bound to a session of the user)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("langgraph.checkpoint.conformance")

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from sessionstore import SessionStore
from sessionstore.integrations.langgraph import SessionStoreSaver


class _OwnSession(SessionStoreSaver):
    """The saver under ``as_user``, naming the user's session on every write as an
    application does in its config (the suite's configs name none)."""

    def __init__(self, store: Any, session_id: str) -> None:
        super().__init__(store)
        self._sid = session_id

    def _with_session(self, config: RunnableConfig) -> RunnableConfig:
        return {"configurable": {**config["configurable"], "session_id": self._sid}}

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await super().aput(self._with_session(config), checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: RunnableConfig, writes: Any, task_id: str, task_path: str = ""
    ) -> None:
        await super().aput_writes(self._with_session(config), writes, task_id, task_path)


async def _report(store: SessionStore, *, as_user: bool) -> Any:
    if as_user:
        session = await store.sessions.create("conformance-user")
        scope = store.as_user("conformance-user")

    @checkpointer_test(name="SessionStoreSaver")
    async def saver() -> AsyncIterator[SessionStoreSaver]:
        if as_user:
            yield _OwnSession(scope, str(session.id))
        else:
            yield SessionStoreSaver(store)

    return await validate(saver)


def _assert_all_passed(report: Any) -> None:
    failures = {
        name: result.failures
        for name, result in report.results.items()
        if result.passed is not True
    }
    assert failures == {}
    assert set(report.results) == {c.value for c in ALL_CAPABILITIES}
    assert all(result.detected for result in report.results.values())


async def test_langgraph_conformance_on_the_service_path(store: SessionStore) -> None:
    """Every capability detected and passed, threads of no session."""
    _assert_all_passed(await _report(store, as_user=False))


async def test_langgraph_conformance_under_row_level_security(
    supabase_store: SessionStore,
) -> None:
    """Every capability detected and passed under ``as_user`` on a Supabase-like
    database (its roles and grants), every thread bound to the user's session."""
    _assert_all_passed(await _report(supabase_store, as_user=True))
