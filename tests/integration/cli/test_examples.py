"""The scripts in examples/ run as their docstrings say — from the repository root, as
subprocesses, against a fresh migrated database — and print what their docstrings show.

(examples/mcp_server.py and examples/web_app.py are servers, tested through their
frameworks' own clients in tests/integrations/test_mcp_server.py and test_web_app.py.)
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from ...conftest import as_supabase_postgres
from ...servers import TestServer

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
SCRIPTS = ("quickstart.py", "write_behind.py", "supabase_rls.py")
SERVERS = ("mcp_server.py", "web_app.py")
TIMEOUT = 60.0


def _docstring(name: str) -> str:
    doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text()))
    assert doc, f"examples/{name} has no module docstring"
    return doc


def _documented_output(name: str) -> list[str]:
    """The last indented block of the script's docstring: what it prints."""
    blocks = [b for b in _docstring(name).split("\n\n") if b.startswith("    ")]
    assert blocks, f"examples/{name}: its docstring shows no output"
    return [line.removeprefix("    ") for line in blocks[-1].splitlines()]


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.pop("SESSIONSTORE_DATABASE_URL", None)
    return {**env, **values}


async def _run(name: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        f"examples/{name}",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"examples/{name} did not finish within {TIMEOUT:.0f} s")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _store_env(dsn: str) -> dict[str, str]:
    # Behind CI's PgBouncer (not on Supabase's port 6543) a user sets the pooler mode.
    pooler = os.environ.get("SESSIONSTORE_TEST_POOLER", "auto")
    return _env(SESSIONSTORE_DATABASE_URL=dsn, SESSIONSTORE_POOLER=pooler)


@pytest.mark.parametrize("name", ["quickstart.py", "write_behind.py"])
async def test_example_prints_what_its_docstring_shows(dsn: str, name: str) -> None:
    for _ in range(2):  # and again on the same database
        code, out, err = await _run(name, _store_env(dsn))
        assert code == 0, err
        assert out.splitlines() == _documented_output(name)


async def test_supabase_rls_example_on_a_supabase_like_database(
    pg_server: TestServer, supabase_database: str
) -> None:
    dsn = as_supabase_postgres(pg_server.dsn_for(supabase_database))
    for _ in range(2):
        code, out, err = await _run("supabase_rls.py", _store_env(dsn))
        assert code == 0, err
        assert out.splitlines() == _documented_output("supabase_rls.py")


async def test_quickstart_without_a_database_url_says_so_in_one_line() -> None:
    code, out, err = await _run("quickstart.py", _env())
    assert code == 1
    assert out == ""
    assert err.splitlines() == [err.strip()]
    assert err.startswith("quickstart: ")
    assert "SESSIONSTORE_DATABASE_URL" in err


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_docstring_says_how_to_run_it_from_the_repository_root(name: str) -> None:
    assert f"    python examples/{name}\n" in _docstring(name) + "\n"


def test_examples_readme_lists_every_example() -> None:
    listed = set(re.findall(r"\]\(([\w.]+\.py)\)", (EXAMPLES / "README.md").read_text()))
    on_disk = {p.name for p in EXAMPLES.glob("*.py")}
    assert listed == on_disk
    assert set(SCRIPTS) | set(SERVERS) == on_disk
