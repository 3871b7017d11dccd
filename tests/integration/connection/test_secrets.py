"""No form of database password leaks: not into ``repr``, logs, errors or the command.

Each URL carries the canary password in one of the forms asyncpg accepts (user-info,
``?password=``, percent-encoded, several hosts) or that people get wrong (an unencoded
``/``, ``#``, ``?`` or ``@``, SQLAlchemy's ``+asyncpg``, a forgotten ``@host``). Most
point at a closed port, so connecting fails at once and no database is needed; the live
tests at the end log in for real as a role whose password is the canary.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import asyncpg
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner, Result

import sessionstore
from sessionstore import InvalidInputError, SessionStoreError, StoreConfig, StoreUnavailableError
from sessionstore.cli import app, explain
from sessionstore.config import redact_dsn
from sessionstore.db import connect_arguments
from sessionstore.dsn import check_dsn, hide_secrets

from ...conftest import admin_execute, create_database, drop_database
from ...servers import TestServer

CANARY = "Hunter2Secret"
CLOSED = "127.0.0.1:1"  # nothing listens on port 1: connecting fails at once
DSN_VARIABLES = ("SESSIONSTORE_DATABASE_URL", "DATABASE_URL")
runner = CliRunner()

#: URLs asyncpg reads as meant: connecting fails only because nothing listens.
VALID = {
    "user-info": f"postgresql://app:{CANARY}@{CLOSED}/db",
    "query": f"postgresql://app@{CLOSED}/db?password={CANARY}",
    "query-sslpassword": f"postgresql://app@{CLOSED}/db?sslmode=disable&sslpassword={CANARY}",
    "percent-encoded": f"postgresql://app:{quote(CANARY + '/#?@', safe='')}@{CLOSED}/db",
    "multi-host": f"postgresql://app:{CANARY}@{CLOSED},127.0.0.1:2/db",
}
#: URLs refused with one sentence before anything parses them.
REFUSED = {
    "slash": f"postgresql://app:{CANARY}/x@{CLOSED}/db",
    "slash-inside": f"postgresql://app:pa/{CANARY}@{CLOSED}/db",
    "hash": f"postgresql://app:{CANARY}#x@{CLOSED}/db",
    "hash-inside": f"postgresql://app:pa#{CANARY}@{CLOSED}/db",
    "question-mark": f"postgresql://app:{CANARY}?x@{CLOSED}/db",
    "question-mark-inside": f"postgresql://app:pa?{CANARY}@{CLOSED}/db",
    "at": f"postgresql://app:{CANARY}@x@{CLOSED}/db",
    "at-inside": f"postgresql://app:pa@{CANARY}@{CLOSED}/db",
    "bracket": f"postgresql://app:pa[{CANARY}@{CLOSED}/db",
    "sqlalchemy": f"postgresql+asyncpg://app:{CANARY}@{CLOSED}/db",
    "no-host": f"postgresql://app:{CANARY}/db",
    "query-unencoded-ampersand": f"postgresql://app@{CLOSED}/db?password=x&{CANARY}",
    "query-unencoded-hash": f"postgresql://app@{CLOSED}/db?password=x#{CANARY}",
    "not-a-url": f"app:{CANARY}@{CLOSED}/db",
}
FORMS = {**VALID, **REFUSED}
COMMANDS = {
    "status": ["status"],
    "migrate": ["migrate"],
    "downgrade": ["downgrade", "base"],
    "cleanup": ["cleanup", "--dry-run"],
    "replay": ["replay", "SPILL"],
    "demo": ["demo", "--yes", "--clients", "1"],
}


def error_texts(exc: BaseException) -> list[str]:
    """The traceback, and ``str`` and ``repr`` of ``exc`` and all its causes and contexts."""
    texts = ["".join(traceback.format_exception(exc))]
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current)]
        if isinstance(current, ValidationError):
            texts += [repr(current.errors()), current.json()]
        pending += [current.__cause__, current.__context__]
    return texts


class Everything(logging.Handler):
    """Every record, at every level, from the root down: pytest's own capture handler
    is made anew for each test phase at ``log_level`` (INFO here), so a level set in a
    fixture would not reach the test's call (its DEBUG records were lost)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        """The records, formatted (tracebacks included), one per line."""
        return "\n".join(self.format(record) for record in self.records)


def logged(caught: Everything) -> list[str]:
    """Every captured record: formatted, its message, and any traceback."""
    texts = [caught.text]
    for record in caught.records:
        texts += [record.getMessage(), record.exc_text or ""]
        if record.exc_info and record.exc_info[1] is not None:
            texts += error_texts(record.exc_info[1])
    return texts


def assert_hidden(texts: list[str]) -> None:
    for text in texts:
        assert CANARY not in text, text


def command_output(result: Result) -> list[str]:
    """What the command printed, and whatever escaped it."""
    texts = [result.output]
    if result.exception is not None:
        texts += error_texts(result.exception)
    return texts


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DSN from the machine running the tests."""
    for name in DSN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def everything_logged() -> Iterator[Everything]:
    """Capture every level, from the root, sessionstore's and asyncpg's loggers."""
    caught = Everything()
    root = logging.getLogger()
    loggers = [root, *(logging.getLogger(n) for n in ("sessionstore", "asyncpg", "alembic"))]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    root.addHandler(caught)
    yield caught
    root.removeHandler(caught)
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


@pytest.mark.parametrize("dsn", FORMS.values(), ids=FORMS.keys())
def test_config_and_redaction_hide_every_form(dsn: str) -> None:
    assert CANARY not in (redact_dsn(dsn) or "")
    assert CANARY not in hide_secrets(f"could not use {dsn}", dsn)
    if dsn in VALID.values():
        config = StoreConfig(dsn=dsn)
        assert_hidden([repr(config), str(config), repr(StoreConfig.load(dsn=dsn))])
        return
    with pytest.raises(ValidationError) as raw:
        StoreConfig(dsn=dsn)
    assert_hidden(error_texts(raw.value))
    with pytest.raises(InvalidInputError) as info:
        StoreConfig.load(dsn=dsn)
    assert info.value.field == "dsn"
    assert_hidden(error_texts(info.value))


@pytest.mark.parametrize("dsn", FORMS.values(), ids=FORMS.keys())
async def test_connect_hides_every_form(dsn: str, everything_logged: Everything) -> None:
    with pytest.raises(SessionStoreError) as info:
        async with sessionstore.connect(dsn, connect_timeout=2):
            pass
    if dsn in VALID.values():
        assert isinstance(info.value, StoreUnavailableError)
    else:
        assert isinstance(info.value, InvalidInputError)
        assert info.value.field == "dsn"
    assert_hidden(error_texts(info.value) + logged(everything_logged))


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
@pytest.mark.parametrize("dsn", FORMS.values(), ids=FORMS.keys())
def test_cli_hides_every_form(
    dsn: str,
    command: list[str],
    tmp_path: Path,
    everything_logged: Everything,
) -> None:
    spill = tmp_path / "spill.jsonl"
    spill.write_text("")
    args = [str(spill) if a == "SPILL" else a for a in command]
    result = runner.invoke(app, [*args, "--dsn", dsn])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a sentence, not a raw exception
    assert "error:" in result.output
    assert "Traceback" not in result.output
    assert_hidden(command_output(result) + logged(everything_logged))


@pytest.mark.parametrize("variable", DSN_VARIABLES)
@pytest.mark.parametrize("dsn", FORMS.values(), ids=FORMS.keys())
def test_cli_hides_every_form_from_the_environment(
    dsn: str,
    variable: str,
    monkeypatch: pytest.MonkeyPatch,
    everything_logged: Everything,
) -> None:
    monkeypatch.setenv(variable, dsn)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert_hidden(command_output(result) + logged(everything_logged))


# Regressions for the items 6, 7, 8 and 10.


def test_query_password_is_hidden_in_repr_and_messages() -> None:
    dsn = f"postgresql://app@h:5432/db?sslmode=require&password={CANARY}"
    config = StoreConfig(dsn=dsn)
    assert "password=***" in repr(config)
    assert "sslmode=require" in repr(config)
    error = asyncpg.InvalidPasswordError("password authentication failed for user app")
    assert explain(error, dsn).startswith("Authentication failed for postgresql://app@h:5432/db")
    assert CANARY not in explain(error, dsn)


@pytest.mark.parametrize("delimiter", ["/", "#", "?", "@"])
def test_an_unencoded_delimiter_in_the_password_is_one_sentence(delimiter: str) -> None:
    dsn = f"postgresql://app:pa{delimiter}{CANARY}@h/db"
    assert redact_dsn(dsn) == "postgresql://***@h/db"
    with pytest.raises(InvalidInputError) as info:
        StoreConfig.load(dsn=dsn)
    assert "percent-encode the password with urllib.parse.quote(password, safe='')" in str(
        info.value
    )
    result = runner.invoke(app, ["status", "--dsn", dsn])
    assert "percent-encode" in result.output
    assert "invalid literal" not in result.output
    encoded = f"postgresql://app:{quote('pa' + delimiter + CANARY, safe='')}@h/db"
    assert StoreConfig.load(dsn=encoded).dsn == encoded


def test_sqlalchemy_url_in_the_environment_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SESSIONSTORE_DATABASE_URL", f"postgresql+asyncpg://u:{CANARY}@h/db")
    with pytest.raises(InvalidInputError) as info:
        StoreConfig.load()
    assert str(info.value) == (
        "dsn: SESSIONSTORE_DATABASE_URL is an SQLAlchemy URL (postgresql+asyncpg://): "
        "drop the '+asyncpg' driver suffix and start it with postgresql://"
    )
    with pytest.raises(InvalidInputError) as connecting:
        sessionstore.connect()
    assert connecting.value.field == "dsn"
    assert_hidden(error_texts(connecting.value))
    result = runner.invoke(app, ["migrate"])
    assert result.exit_code == 1
    assert "drop the '+asyncpg' driver suffix" in " ".join(result.output.split())
    assert_hidden(command_output(result))


def test_an_explicit_dsn_is_not_blocked_by_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SESSIONSTORE_DATABASE_URL", f"postgresql+asyncpg://u:{CANARY}@h/db")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///app.db")
    dsn = f"postgresql://app@{CLOSED}/db"
    assert StoreConfig(dsn=dsn).dsn == dsn
    assert StoreConfig.load(dsn=dsn, max_size=3).dsn == dsn
    assert sessionstore.connect(dsn).config.dsn == dsn
    result = runner.invoke(app, ["status", "--dsn", dsn])
    assert f"Could not reach postgresql://app@{CLOSED}/db" in " ".join(result.output.split())
    assert "+asyncpg" not in result.output


def test_a_foreign_database_url_alone_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"mysql://u:{CANARY}@h/app")
    assert StoreConfig().dsn is None
    with pytest.raises(InvalidInputError) as info:
        sessionstore.connect()
    assert info.value.field == "dsn"
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 1
    assert "DATABASE_URL is read only when it is a postgresql:// URL" in " ".join(
        result.output.split()
    )
    assert_hidden(command_output(result))
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/app")
    assert StoreConfig().dsn == "postgres://u@h/app"
    monkeypatch.setenv("SESSIONSTORE_DATABASE_URL", "postgresql://primary@h/app")
    assert StoreConfig().dsn == "postgresql://primary@h/app"


@pytest.mark.parametrize(
    ("hosts", "effective"),
    [
        ("h1:5432,h2:5433", "none"),
        ("h1:6543,h2:6543", "transaction"),
        ("h1:5432,h2:6543", "transaction"),  # any transaction pooler among them decides
        ("h1,[::1]:6543", "transaction"),
        ("h1,h2", "none"),
    ],
)
def test_several_hosts(hosts: str, effective: str) -> None:
    config = StoreConfig(dsn=f"postgresql://u:{CANARY}@{hosts}/db")
    assert config.effective_pooler == effective
    assert CANARY not in repr(config)
    assert connect_arguments(config)["dsn"] == config.dsn  # asyncpg gets the list as is


def test_hide_secrets_catches_decoded_and_cut_passwords() -> None:
    encoded = f"postgresql://app:{quote(CANARY + '/x', safe='')}@h/db"
    assert hide_secrets(f"login failed with {CANARY}/x", encoded) == "login failed with ***"
    cut = f"postgresql://app:pa/{CANARY}@h/db"  # a parser may quote either piece
    assert hide_secrets(f"bad port {CANARY!r}", cut) == "bad port '***'"


def test_ports_come_from_the_query_without_a_host_before_the_path() -> None:
    assert check_dsn("postgresql:///db?host=h1,h2&port=6543").ports == (6543, 6543)
    assert check_dsn("postgresql://u@%2Ftmp%2Fpg/db").hosts == ("/tmp/pg",)
    with pytest.raises(InvalidInputError, match="port that is not a number"):
        check_dsn("postgresql://u@h:70000/db")


# Live: a role whose password is the canary (with characters that must be encoded).

LIVE_PASSWORD = CANARY + "/#?@&="


@pytest.fixture
async def secret_database(pg_server: TestServer) -> AsyncIterator[tuple[str, str, str, str]]:
    """An empty database owned by a login role whose password is the canary; yields
    (role, host:port, database, query) — host:port is empty and the query names the socket
    directory on the embedded server. Trust auth lets any password in, password auth this
    one."""
    role = f"sstest_secret_{os.getpid()}"
    await admin_execute(
        pg_server,
        f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{LIVE_PASSWORD}'",
    )
    name = await create_database(pg_server, owner=role)
    parts = urlsplit(pg_server.admin_dsn)
    yield role, parts.netloc.rpartition("@")[2], name, parts.query
    await drop_database(pg_server, name)
    await admin_execute(pg_server, f"DROP ROLE IF EXISTS {role}")


def live_forms(role: str, host: str, database: str, query: str) -> dict[str, str]:
    encoded = quote(LIVE_PASSWORD, safe="")
    tail = f"?{query}" if query else ""
    forms = {
        "user-info": f"postgresql://{role}:{encoded}@{host}/{database}{tail}",
        "query": f"postgresql://{role}@{host}/{database}?{query + '&' if query else ''}"
        f"password={encoded}",
    }
    if host:  # a server reached over a socket directory has no host list to extend
        forms["multi-host"] = f"postgresql://{role}:{encoded}@{CLOSED},{host}/{database}{tail}"
    return forms


async def test_live_store_and_cli_hide_the_password(
    secret_database: tuple[str, str, str, str], everything_logged: Everything
) -> None:
    texts: list[str] = []
    for dsn in live_forms(*secret_database).values():
        migrated = await asyncio.to_thread(runner.invoke, app, ["migrate", "--dsn", dsn])
        assert migrated.exit_code == 0, migrated.output
        # the first form migrates, the others find it at head: either way the URL is shown
        said = " ".join(migrated.output.split())
        assert said.startswith(("migrated postgresql://", "postgresql://")), said
        status = await asyncio.to_thread(runner.invoke, app, ["status", "--dsn", dsn])
        assert "sessionstore status: postgresql://" in " ".join(status.output.split())
        cleanup = await asyncio.to_thread(runner.invoke, app, ["cleanup", "--dsn", dsn])
        assert cleanup.exit_code == 0, cleanup.output
        async with sessionstore.connect(dsn, connect_timeout=5) as store:
            await store.sessions.create("u")
        texts += command_output(migrated) + command_output(status) + command_output(cleanup)
    assert "pool open: postgresql://" in everything_logged.text
    # DEBUG too (asyncpg's or ours): the capture reaches the test's own phase.
    assert any(r.levelno == logging.DEBUG for r in everything_logged.records)
    assert_hidden(texts + logged(everything_logged))
