"""Review of ``sessionstore prune``: every argument the library would refuse is refused
by the command line before it connects, as a usage error naming the option."""

from __future__ import annotations

import pytest

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
