"""``sessionstore prune``: a dry run counts, a real run deletes with a progress bar, and
arguments are refused before anything connects."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest
import typer

from sessionstore.cli.durations import parse_duration

from .test_cli import cli, text

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


async def _seed(conn: asyncpg.Connection, conversations: int, messages: int) -> None:
    """Conversations of ``messages`` messages each, every one 100 days old."""
    await conn.execute(
        """
        WITH c AS (
            INSERT INTO conversations (continuation_id, message_count)
            SELECT 'c-' || g, $2 FROM generate_series(1, $1) g RETURNING id
        )
        INSERT INTO messages (conversation_id, seq, role, content, created_at)
        SELECT c.id, g, 'user', 'm', now() - interval '100 days'
        FROM c, generate_series(1, $2) g
        """,
        conversations,
        messages,
    )


async def test_prune_dry_run_then_for_real(admin_dsn: str, conn: asyncpg.Connection) -> None:
    await _seed(conn, conversations=3, messages=10)
    dry = await cli("prune", "--dsn", admin_dsn, "--keep-last", "4", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would delete 18 messages" in text(dry)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 30
    young = await cli("prune", "--dsn", admin_dsn, "--keep-last", "4", "--older-than", "101d")
    assert young.exit_code == 0, young.output
    assert "deleted 0 messages" in text(young)
    real = await cli(
        "prune", "--dsn", admin_dsn, "--keep-last", "4", "--older-than", "90d", "--batch-size", "5"
    )
    assert real.exit_code == 0, real.output
    assert "deleted 18 messages of 3 conversations" in text(real)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 12
    assert await conn.fetchval("SELECT min(seq) FROM messages") == 7
    assert await conn.fetchval("SELECT sum(message_count) FROM conversations") == 30


async def test_prune_needs_a_rule_before_it_connects() -> None:
    result = await cli("prune", "--dsn", UNREACHABLE)
    assert result.exit_code == 1
    assert "give --keep-last N, --older-than AGE or both" in text(result)


@pytest.mark.parametrize(
    "age", ["90", "90x", "1.5d", "-1d", "0d", "d", "90 d", "9d9", "90D", "", "99999999999999d"]
)
async def test_prune_refuses_what_is_no_duration(age: str) -> None:
    result = await cli("prune", "--dsn", UNREACHABLE, "--older-than", age)
    assert result.exit_code == 2
    assert "Invalid value for '--older-than'" in text(result)


@pytest.mark.parametrize("option", [("--keep-last", "-1"), ("--batch-size", "10001")])
async def test_prune_refuses_counts_out_of_range(option: tuple[str, str]) -> None:
    result = await cli("prune", "--dsn", UNREACHABLE, "--keep-last", "1", *option)
    assert result.exit_code == 2
    assert f"Invalid value for '{option[0]}'" in text(result)


@pytest.mark.parametrize(
    ("age", "value"),
    [
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        (" 90d ", timedelta(days=90)),
        ("2w", timedelta(weeks=2)),
        ("365000d", timedelta(days=365_000)),
    ],
)
def test_durations_are_an_integer_and_one_unit(age: str, value: timedelta) -> None:
    assert parse_duration(age) == value


def test_a_refused_duration_says_what_is_accepted() -> None:
    with pytest.raises(typer.BadParameter) as info:
        parse_duration("3 months")
    assert "an integer and one unit, s, m (minutes), h, d or w" in str(info.value)
    with pytest.raises(typer.BadParameter) as info:
        parse_duration("365001d")
    assert "at most 365000 days" in str(info.value)


async def test_prune_has_help() -> None:
    result = await cli("prune", "--help")
    assert result.exit_code == 0
    assert "--older-than" in text(result)
    assert "--dry-run" in text(result)
