"""Review of ``sessionstore prune``: every argument the library would refuse is refused
by the command line before it connects, as a usage error naming the option."""

from __future__ import annotations

import asyncpg
import pytest

from sessionstore import SessionStore, StoreTimeoutError

from ..cli.test_cli import cli, text

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
async def test_a_keep_last_past_the_integer_range_is_a_usage_error(dry_run: list[str]) -> None:
    result = await cli("prune", "--dsn", UNREACHABLE, "--keep-last", "2147483648", *dry_run)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--keep-last'" in text(result)
    assert "ConnectionRefused" not in text(result)


async def test_the_widest_keep_last_is_accepted_by_the_command_line() -> None:
    result = await cli("prune", "--dsn", UNREACHABLE, "--keep-last", "2147483647", "--dry-run")
    assert "Invalid value" not in text(result)  # refused only for the unreachable server
    assert result.exit_code == 1


async def test_a_real_prune_does_not_wait_on_counting_every_due_message(
    admin_dsn: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``count_prunable`` is one statement over every message (about 1 s per million
    here): on a store of tens of millions it passes ``command_timeout``. The prune itself
    runs in short batches and needs no count, so a real run must not depend on one (the
    count stands in here for one that timed out)."""

    async def timed_out(*args: object, **kwargs: object) -> int:
        raise StoreTimeoutError("operation timed out on the client and was cancelled")

    monkeypatch.setattr(SessionStore, "count_prunable", timed_out)
    await conn.execute(
        """
        WITH c AS (
            INSERT INTO conversations (continuation_id, message_count)
            SELECT 'c-' || g, 10 FROM generate_series(1, 3) g RETURNING id
        )
        INSERT INTO messages (conversation_id, seq, role, content)
        SELECT c.id, g, 'user', 'm' FROM c, generate_series(1, 10) g
        """
    )
    result = await cli("prune", "--dsn", admin_dsn, "--keep-last", "4")
    assert result.exit_code == 0, result.output
    assert "deleted 18 messages of 3 conversations" in text(result)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 12
