"""StoreConfig and the pure parts of the API (no database)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

import sessionstore
from sessionstore import InvalidInputError, StoreConfig
from sessionstore.config import redact_dsn
from sessionstore.db import connect_arguments
from sessionstore.pagination import decode_cursor, encode_cursor


def test_repr_and_str_never_show_the_password() -> None:
    cfg = StoreConfig(dsn="postgresql://app:s3cret@db.example:5432/x")
    assert "s3cret" not in repr(cfg)
    assert "s3cret" not in str(cfg)
    assert "app:***@db.example" in repr(cfg)
    assert redact_dsn("postgresql://app@h/x") == "postgresql://app@h/x"


@pytest.mark.parametrize(
    ("dsn", "pooler", "effective"),
    [
        ("postgresql://u:p@aws-0.pooler.supabase.com:6543/postgres", "auto", "transaction"),
        ("postgresql://u:p@aws-0.pooler.supabase.com:5432/postgres", "auto", "none"),
        ("postgresql://u@h/db", "auto", "none"),
        ("postgresql://u@h:6543/db", "session", "session"),
        ("postgresql://u@h:6432/db", "transaction", "transaction"),
    ],
)
def test_pooler_auto_detects_the_transaction_port(dsn: str, pooler: str, effective: str) -> None:
    assert StoreConfig(dsn=dsn, pooler=pooler).effective_pooler == effective


def test_transaction_pooler_turns_the_statement_cache_off() -> None:
    kwargs = connect_arguments(StoreConfig(dsn="postgresql://u@h:6543/db", statement_timeout=5))
    assert kwargs["statement_cache_size"] == 0
    assert "statement_timeout" not in kwargs["server_settings"]
    direct = connect_arguments(StoreConfig(dsn="postgresql://u@h:5432/db", statement_timeout=5))
    assert direct["server_settings"]["statement_timeout"] == "5000"
    assert "statement_cache_size" not in direct
    one_off = StoreConfig(dsn="postgresql://u@h:5432/db")
    assert connect_arguments(one_off, statement_cache=False)["statement_cache_size"] == 0


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SESSIONSTORE_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://fallback@h/db")
    monkeypatch.setenv("SESSIONSTORE_MAX_SIZE", "42")
    monkeypatch.setenv("SESSIONSTORE_DEFAULT_TTL", "PT1H")
    cfg = StoreConfig()
    assert (cfg.dsn, cfg.max_size, cfg.default_ttl) == (
        "postgresql://fallback@h/db",
        42,
        timedelta(hours=1),
    )
    monkeypatch.setenv("SESSIONSTORE_DATABASE_URL", "postgresql://primary@h/db")
    assert StoreConfig().dsn == "postgresql://primary@h/db"


def test_overrides_are_validated() -> None:
    with pytest.raises(InvalidInputError) as info:
        sessionstore.connect("postgresql://u@h/db", min_size=5, max_size=2)
    assert info.value.field == "max_size"
    with pytest.raises(InvalidInputError) as pooler:
        sessionstore.connect("postgresql://u@h/db", pooler="pgbouncer")
    assert pooler.value.field == "pooler"


def test_cursor_round_trip() -> None:
    at, row_id = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), uuid4()
    assert decode_cursor(encode_cursor(at, row_id)) == (at, row_id)
    assert decode_cursor(None) == (None, None)
    for bad in ("", "x", encode_cursor(at, row_id)[:-3] + "!!!"):
        with pytest.raises(InvalidInputError):
            decode_cursor(bad)


SUPABASE_DSNS = [
    # as the dashboard shows them: direct, session pooler, transaction pooler
    ("postgresql://postgres:p%40ss@db.abcdefghijklmnop.supabase.co:5432/postgres", "none"),
    (
        "postgresql://postgres.abcdefghijklmnop:p%40ss@aws-0-eu-central-1.pooler.supabase.com:5432/postgres",
        "none",
    ),
    (
        "postgresql://postgres.abcdefghijklmnop:p%40ss@aws-0-eu-central-1.pooler.supabase.com:6543/postgres",
        "transaction",
    ),
    (
        "postgres://postgres.abcdefghijklmnop:p%40ss@aws-0-eu-central-1.pooler.supabase.com:6543/postgres?sslmode=require",
        "transaction",
    ),
]


@pytest.mark.parametrize(("dsn", "pooler"), SUPABASE_DSNS)
def test_supabase_connection_strings(dsn: str, pooler: str) -> None:
    cfg = StoreConfig(dsn=dsn)
    assert cfg.effective_pooler == pooler
    assert "p%40ss" not in repr(cfg)
    assert "p@ss" not in repr(cfg)


def test_ssl_argument(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("")  # only its existence is checked until a context is built
    assert StoreConfig(dsn="postgresql://u@h/db").ssl_argument() is None
    assert StoreConfig(dsn="postgresql://u@h/db", ssl="require").ssl_argument() == "require"
    with pytest.raises(InvalidInputError) as info:
        sessionstore.connect("postgresql://u@h/db", ssl="require", ssl_root_cert=ca)
    assert info.value.field == "ssl"
    with pytest.raises(InvalidInputError) as missing:
        sessionstore.connect("postgresql://u@h/db", ssl_root_cert=tmp_path / "nope.crt")
    assert missing.value.field == "ssl_root_cert"


def test_from_trusted_equals_model_construct() -> None:
    from sessionstore.models import (
        Conversation,
        Message,
        MessageRole,
        Session,
        SessionStatus,
        from_trusted,
    )

    now = datetime.now(UTC)
    samples: list[tuple[type[Any], dict[str, Any]]] = [
        (
            Message,
            {
                "id": uuid4(),
                "conversation_id": uuid4(),
                "seq": 3,
                "role": MessageRole.USER,
                "content": "x",
                "metadata": {"a": 1},
                "tokens": None,
                "created_at": now,
                "covers_through": None,
            },
        ),
        (
            Session,
            {
                "id": uuid4(),
                "user_id": "u",
                "title": None,
                "status": SessionStatus.ACTIVE,
                "created_at": now,
                "updated_at": now,
                "expires_at": None,
                "metadata": {},
                "turn_count": 1,
                "total_tokens": 2,
                "version": 1,
            },
        ),
        (
            Conversation,
            {
                "id": uuid4(),
                "continuation_id": "c",
                "session_id": None,
                "title": "t",
                "metadata": {},
                "created_at": now,
                "updated_at": now,
                "message_count": 0,
                "last_message_at": None,
                "total_tokens": 0,
                "forked_from": uuid4(),
                "forked_at_seq": 3,
                "compacted_through": 2,
            },
        ),
    ]
    for cls, values in samples:
        fast, slow = from_trusted(cls, dict(values)), cls.model_construct(**values)
        assert fast == slow
        assert repr(fast) == repr(slow)
        assert fast.model_dump() == slow.model_dump()
        assert fast.model_fields_set == slow.model_fields_set
        assert fast.model_copy(update={"metadata": {"z": 0}}).metadata == {"z": 0}
        with pytest.raises(ValidationError):  # still frozen
            fast.metadata = {}


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for name in StoreConfig.model_fields:
        assert f"| `{name}` |" in doc, f"docs/configuration.md does not describe {name}"


def test_migrations_are_not_bounded_by_the_per_statement_timeouts() -> None:
    config = StoreConfig(dsn="postgresql://u@h/db", command_timeout=2, statement_timeout=5)
    service = connect_arguments(config)
    assert service["command_timeout"] == 2
    assert service["server_settings"]["statement_timeout"] == "5000"
    migrating = connect_arguments(config, migrations=True)
    assert migrating["command_timeout"] is None
    assert "statement_timeout" not in migrating["server_settings"]
    assert migrating["timeout"] == config.connect_timeout  # connecting stays bounded


def test_load_raises_invalid_input_and_keeps_the_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONSTORE_DATABASE_URL", "postgresql://env@h/db")
    base = StoreConfig.load(dsn="postgresql://given@h/db", max_size=4)
    assert (base.dsn, base.max_size) == ("postgresql://given@h/db", 4)
    assert StoreConfig.load(base) is base
    assert StoreConfig.load(base, min_size=2).dsn == "postgresql://given@h/db"  # env not reread
    assert StoreConfig.load(dsn=None).dsn == "postgresql://env@h/db"  # None: not given
    with pytest.raises(InvalidInputError) as info:
        StoreConfig.load(base, pooler="pgbouncer")
    assert info.value.field == "pooler"
    assert "pgbouncer" not in str(info.value)  # the value is never quoted


def _documented_settings() -> list[tuple[str, str, str, list[str]]]:
    """docs/configuration.md's table: (field, variable, default, example values), the
    values as they are written in the environment."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    rows = []
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`") or cells[0] == "`field`":
            continue
        ticked = [re.findall(r"`([^`]+)`", c) for c in cells[:4]]
        if not ticked[0] or not ticked[1]:
            continue
        default = ticked[2][0] if ticked[2] else ""
        rows.append((ticked[0][0], ticked[1][0], default, ticked[3]))
    return rows


DOCUMENTED = _documented_settings()


def test_the_configuration_table_lists_every_field() -> None:
    assert {field for field, *_ in DOCUMENTED} == set(StoreConfig.model_fields)


@pytest.mark.parametrize(
    ("field", "variable", "value"),
    [(f, var, x) for f, var, _, examples in DOCUMENTED for x in examples],
)
def test_every_documented_example_value_is_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, field: str, variable: str, value: str
) -> None:
    """docs/configuration.md says what the environment takes: each of its example
    values loads (SESSIONSTORE_DEFAULT_TTL=null and =3600 were refused)."""
    monkeypatch.setenv("SESSIONSTORE_DATABASE_URL", "postgresql://app@db.example.com/app")
    if field == "ssl_root_cert":
        value = str(tmp_path / "ca.pem")
    monkeypatch.setenv(variable, value)
    config = StoreConfig.load()
    if field == "default_ttl" and value == "null":
        assert config.default_ttl is None
    else:
        assert getattr(config, field) is not None


@pytest.mark.parametrize(
    ("field", "variable", "default"), [(f, var, d) for f, var, d, _ in DOCUMENTED if d]
)
def test_every_documented_default_is_the_default(
    monkeypatch: pytest.MonkeyPatch, field: str, variable: str, default: str
) -> None:
    monkeypatch.setenv("SESSIONSTORE_DATABASE_URL", "postgresql://app@db.example.com/app")
    built_in = getattr(StoreConfig.load(), field)
    monkeypatch.setenv(variable, default)
    assert getattr(StoreConfig.load(), field) == built_in


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("null", None),
        ("None", None),
        ("3600", timedelta(hours=1)),
        ("1.5", timedelta(seconds=1.5)),
        ("PT24H", timedelta(days=1)),
        ("P7D", timedelta(days=7)),
    ],
)
def test_default_ttl_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: timedelta | None
) -> None:
    monkeypatch.setenv("SESSIONSTORE_DATABASE_URL", "postgresql://app@db.example.com/app")
    monkeypatch.setenv("SESSIONSTORE_DEFAULT_TTL", value)
    assert StoreConfig.load().default_ttl == expected
    monkeypatch.setenv("SESSIONSTORE_DEFAULT_TTL", "-5")
    with pytest.raises(InvalidInputError) as caught:
        StoreConfig.load()
    assert caught.value.field == "default_ttl"
