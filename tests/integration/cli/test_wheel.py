"""The wheel as a newcomer installs it: built from this tree, installed with pip into a
fresh virtual environment outside the tree, and run from a directory outside it, with no
``PYTHONPATH`` to the source. Every command of the README's first hour, and Alembic on
the revisions the wheel carries (through a two-line ini and through
``sessionstore alembic``), against a fresh database.

Migrations go over the direct DSN; the other commands over the application's (through
the pooler under test, with its mode set as docs/configuration.md tells a user to).
"""

from __future__ import annotations

import asyncio
import email.parser
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit
from uuid import uuid4

import asyncpg
import pytest

from sessionstore.migrations import head_revision

from ...servers import TestServer

ROOT = Path(__file__).resolve().parents[3]
PIP = ("-m", "pip", "--disable-pip-version-check", "--quiet", "--no-input")
#: pip's words when no package index answers (offline machine, proxy, DNS).
_NO_INDEX = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Max retries exceeded",
    "ProxyError",
    "ConnectTimeout",
    "Read timed out",
)
#: What the environment may not carry into the installed commands: the source tree on
#: the path, another virtual environment, or a database URL the test did not choose.
_UNSET = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DATABASE_URL", "ALEMBIC_CONFIG")
#: A two-line ini, as docs/migrating.md shows it: no logging sections, no URL.
USER_INI = "[alembic]\nscript_location = sessionstore:alembic\n"
SUBPROCESS_TIMEOUT = 180


@dataclass(frozen=True)
class Installed:
    """The fresh virtual environment with the wheel installed, and a directory to run
    its commands from (outside the source tree)."""

    venv: Path
    cwd: Path
    wheel: Path

    def bin(self, name: str) -> str:
        """The path of ``name`` in the environment's ``bin`` directory."""
        return str(self.venv / ("Scripts" if os.name == "nt" else "bin") / name)

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment for the installed commands, plus ``extra``."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _UNSET and not k.startswith("SESSIONSTORE_")
        }
        env["PATH"] = os.pathsep.join([str(Path(self.bin("python")).parent), env["PATH"]])
        return {**env, **extra}


def _pip_failed(what: str, result: subprocess.CompletedProcess[str]) -> None:
    """Fail the test, or skip it when no package index answers and this is not CI."""
    output = (result.stdout + result.stderr).strip()
    said = [line for line in output.splitlines() if any(m in line for m in _NO_INDEX)]
    if said and not os.environ.get("CI"):
        reason = said[0].strip()
        pytest.skip(f"{what}: pip could not reach a package index (not CI, so skipped): {reason}")
    pytest.fail(f"{what} failed (exit {result.returncode}):\n{output}")


def _run_pip(what: str, args: list[str], cwd: Path) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        _pip_failed(what, result)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel, create a virtual environment outside the tree, install it there
    (its dependencies from the package index, no extras). Once per module: it is slow."""
    base = tmp_path_factory.mktemp("wheel").resolve()
    assert not base.is_relative_to(ROOT)
    dist, venv, cwd = base / "dist", base / "venv", base / "work"
    cwd.mkdir()
    _run_pip(
        "building the wheel",
        [sys.executable, *PIP, "wheel", "--no-deps", "--wheel-dir", str(dist), str(ROOT)],
        cwd,
    )
    (wheel,) = dist.glob("sessionstore-*.whl")
    subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], check=True, timeout=SUBPROCESS_TIMEOUT
    )
    made = Installed(venv=venv, cwd=cwd, wheel=wheel)
    _run_pip("installing the wheel", [made.bin("python"), *PIP, "install", str(wheel)], cwd)
    return made


async def run(
    installed: Installed, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an installed command from the directory outside the tree."""
    return await asyncio.to_thread(
        subprocess.run,
        list(args),
        cwd=installed.cwd,
        env=dict(env) if env is not None else installed.env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The output of a command that must have succeeded."""
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def sentence(result: subprocess.CompletedProcess[str]) -> str:
    """The error of a command that must have failed with one sentence."""
    assert result.returncode == 1, f"{result.args}:\n{result.stdout}\n{result.stderr}"
    message = " ".join(result.stderr.split())
    assert message.startswith("error: "), result.stderr
    for noise in ("Traceback", "Background on this error", "sqlalche.me"):
        assert noise not in message
    return message


def _spill_line(**fields: object) -> str:
    record: dict[str, object] = {
        "id": str(uuid4()),
        "kind": "turn",
        "conversation_id": None,
        "continuation_id": "wheel-chat",
        "session_id": None,
        "role": "user",
        "content": "hello",
        "metadata": None,
        "tokens": 2,
        "enqueued_at": datetime.now(UTC).isoformat(),
    }
    return json.dumps({**record, **fields}) + "\n"


# Building and installing come first (pip, from the package index): up to minutes on CI.
@pytest.mark.timeout(900)
async def test_the_installed_wheel_runs_outside_the_tree(
    installed: Installed, pg_server: TestServer, empty_dsn: str
) -> None:
    database = urlsplit(empty_dsn).path.lstrip("/")
    direct = empty_dsn  # migrations: a direct connection
    app = pg_server.dsn_for(database)  # everything else: through the pooler under test
    pooler = os.environ.get("SESSIONSTORE_TEST_POOLER", "auto")
    app_env = installed.env(SESSIONSTORE_POOLER=pooler)
    sessionstore, alembic, python = (
        installed.bin(n) for n in ("sessionstore", "alembic", "python")
    )
    head = head_revision()

    # The package imported is the installed one, and `alembic` is still the library.
    where = ok(
        await run(
            installed,
            python,
            "-c",
            "import os, sessionstore as s; print(os.path.realpath(s.__file__))",
        )
    )
    assert Path(where.strip()).is_relative_to(installed.venv)
    library = ok(
        await run(installed, python, "-c", "import alembic.command as c; print(c.__file__)")
    )
    assert "sessionstore" not in Path(library.strip()).parts

    assert "to head" in ok(await run(installed, sessionstore, "migrate", "--dsn", direct))

    # Alembic itself, through the two-line ini (no logging sections) on the packaged revisions.
    (installed.cwd / "sessionstore.ini").write_text(USER_INI)
    ini = (alembic, "-c", "sessionstore.ini")
    history = ok(await run(installed, *ini, "history", "--verbose"))
    assert str(installed.venv) in history  # the revision files are the wheel's
    assert "0001_baseline" in history
    assert ok(await run(installed, *ini, "-x", f"dsn={direct}", "current")).split() == [
        head,
        "(head)",
    ]
    ok(await run(installed, *ini, "-x", f"dsn={direct}", "downgrade", "-1"))
    assert head not in ok(await run(installed, *ini, "-x", f"dsn={direct}", "current"))
    upgraded = await run(
        installed, *ini, "upgrade", "head", env=installed.env(SESSIONSTORE_DATABASE_URL=direct)
    )
    ok(upgraded)
    assert f"-> {head}" in upgraded.stderr  # Alembic's progress lines, with no logging config
    # ... and with no ini at all.
    current = ok(await run(installed, sessionstore, "alembic", "--dsn", direct, "current"))
    assert current.split() == [head, "(head)"]

    status = ok(await run(installed, sessionstore, "status", "--dsn", app, env=app_env))
    assert head in status

    conn = await asyncpg.connect(direct)
    try:
        await conn.execute(
            "INSERT INTO sessions (user_id, expires_at) SELECT 'u', now() - interval '1 hour'"
            " FROM generate_series(1, 3)"
        )
        dry = await run(installed, sessionstore, "cleanup", "--dsn", app, "--dry-run", env=app_env)
        assert "would delete 3 expired sessions" in " ".join(ok(dry).split())
        real = await run(installed, sessionstore, "cleanup", "--dsn", app, env=app_env)
        assert "deleted 3 expired sessions" in " ".join(ok(real).split())
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 0

        spill = installed.cwd / "spill.jsonl"
        spill.write_text(_spill_line() + _spill_line(role="assistant", content="hi!"))
        replayed = await run(
            installed, sessionstore, "replay", str(spill), "--dsn", app, env=app_env
        )
        assert "replayed 2 messages" in " ".join(ok(replayed).split())
        contents = await conn.fetch(
            "SELECT m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            " WHERE c.continuation_id = 'wheel-chat' ORDER BY m.seq"
        )
        assert [r["content"] for r in contents] == ["hello", "hi!"]
        broken = installed.cwd / "broken.jsonl"
        broken.write_text(_spill_line() + '{"kind": "turn"}\n')
        refused = await run(
            installed, sessionstore, "replay", str(broken), "--dsn", app, env=app_env
        )
        assert "line 2" in sentence(refused)
    finally:
        await conn.close()

    demo = await run(
        installed, sessionstore, "demo", "--dsn", app, "--yes", "--clients", "2", env=app_env
    )
    assert "sessionstore demo" in ok(demo)

    # A URL of another database is one sentence, not SQLAlchemy's text with its link.
    refused = await run(installed, sessionstore, "migrate", "--dsn", "mysql://u:secret@h/db")
    assert "not a PostgreSQL one" in sentence(refused)
    assert "secret" not in refused.stderr


def test_the_package_description_has_no_link_that_leads_nowhere(installed: Installed) -> None:
    """The description the package index shows is the README with its links into the
    tree rewritten (pyproject's fancy-pypi-readme substitutions): off the repository a
    relative link would lead nowhere."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(wheel.read(name).decode())
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload()
    assert isinstance(description, str)
    readme = (ROOT / "README.md").read_text()
    assert description.splitlines()[0] == readme.splitlines()[0]
    targets = re.findall(r"\]\(([^)\s]+)", description)
    assert targets  # the absolute links are kept
    assert [t for t in targets if not t.startswith(("https://", "http://", "#"))] == []
    assert "`docs/configuration.md`" in description  # a rewritten link keeps its path
