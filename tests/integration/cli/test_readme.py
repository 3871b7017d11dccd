"""The README's example runs exactly as written."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "README.md"


def _example() -> str:
    section = README.read_text().split("## Example", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "README has no python block under '## Example'"
    return match.group(1)


def test_example_is_at_most_20_lines_of_code() -> None:
    code = [line for line in _example().splitlines() if line.strip()]
    assert len(code) <= 20


async def test_readme_example_runs_unchanged_and_again(dsn: str) -> None:
    """Also a second time on the same database: its output once grew to four messages,
    because a second session's turns landed in the first one's conversation."""
    # Behind the CI's PgBouncer (port 6432, not Supabase's 6543) a user sets the pooler
    # mode, as docs/configuration.md says; the example reads it from the environment.
    pooler = os.environ.get("SESSIONSTORE_TEST_POOLER", "auto")
    env = {**os.environ, "SESSIONSTORE_DATABASE_URL": dsn, "SESSIONSTORE_POOLER": pooler}
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _example(),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert out.decode().splitlines() == [
            "1 [(1, 'user', 'hi'), (2, 'assistant', 'hello!')]",
            "active 2 52",
        ]
