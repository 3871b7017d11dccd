"""``StoreConfig``: every knob, read from ``SESSIONSTORE_*`` environment variables or code.

The DSN is, first found: the one given in code (``dsn=``), ``SESSIONSTORE_DATABASE_URL``,
then ``DATABASE_URL`` — the latter only when it is a ``postgresql://`` or ``postgres://``
URL, since other programs use that name for their own databases (``sqlite:///app.db``).
A DSN given in code means neither variable is read. A DSN asyncpg would misread is
refused with one sentence (see :mod:`sessionstore.dsn`); ``repr()``, ``str()`` and
validation errors never show it (``hide_input_in_errors``).
:meth:`StoreConfig.load` raises :class:`~sessionstore.errors.InvalidInputError` instead
of pydantic's ``ValidationError``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from ssl import SSLContext, create_default_context
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .crypto import KEY_BYTES, master_key
from .dsn import check_dsn, is_postgres_url, redact_dsn
from .errors import InvalidInputError
from .validation import ttl

__all__ = ["MISSING_DSN", "PoolerMode", "StoreConfig", "redact_dsn"]

#: ``pooler``: ``auto`` (``transaction`` when the DSN's port is 6543, else ``none``),
#: ``none``, ``transaction`` or ``session``.
PoolerMode = Literal["auto", "none", "transaction", "session"]
#: ``ssl``: libpq's ``sslmode`` values.
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

#: Supabase's Supavisor serves transaction mode on this port, session mode on 5432.
SUPABASE_TRANSACTION_PORT = 6543
#: What to say when a DSN is needed and none is set.
MISSING_DSN = (
    "no database URL: pass one (--dsn on the command line) or set SESSIONSTORE_DATABASE_URL "
    "(DATABASE_URL is read only when it is a postgresql:// URL)"
)
#: Where a DSN can come from, most binding first: the field name is what code passes.
_DSN_SOURCES = ("dsn", "SESSIONSTORE_DATABASE_URL", "DATABASE_URL")


def _as_invalid_input(exc: ValidationError) -> InvalidInputError:
    """The first error of ``exc`` as one sentence naming the setting, not its value."""
    first = exc.errors(include_url=False, include_input=False)[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, InvalidInputError):
        return cause
    field = ".".join(str(part) for part in first["loc"]) or "config"
    return InvalidInputError(field, first["msg"].removeprefix("Value error, "))


def _postgres(value: Any) -> bool:
    return isinstance(value, str) and is_postgres_url(value)


class _FromSource(str):
    """A DSN between the two validators, with the name of the setting it came from.

    As a string it is the redacted URL: pydantic puts a failed field's input into
    ``ValidationError.errors()`` and ``.json()`` (``hide_input_in_errors`` covers only
    ``str()``), and this way the input there holds no password.
    """

    source: str
    url: str

    def __new__(cls, source: str, url: str) -> _FromSource:
        shown = super().__new__(cls, redact_dsn(url) or "")
        shown.source, shown.url = source, url
        return shown


class _FallbackUrl(PydanticBaseSettingsSource):
    """``DATABASE_URL``, under its own name.

    An alias choice would hand it over as ``SESSIONSTORE_DATABASE_URL`` (pydantic-settings
    files a value under the first alias): the config could then neither tell the user
    which variable is wrong nor skip a URL meant for another program.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: :meth:`__call__` reads the one variable itself."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        value = os.environ.get("DATABASE_URL")
        return {} if value is None else {"DATABASE_URL": value}


class StoreConfig(BaseSettings):
    """Configuration of a :class:`~sessionstore.SessionStore`.

    Timeouts are in seconds. ``None`` for ``statement_timeout`` leaves the server's setting.
    """

    model_config = SettingsConfigDict(
        env_prefix="SESSIONSTORE_",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        # A pydantic error would otherwise quote the DSN, password and all.
        hide_input_in_errors=True,
    )

    dsn: str | None = Field(
        default=None,
        validation_alias="SESSIONSTORE_DATABASE_URL",
        repr=False,
    )
    min_size: int = Field(default=1, ge=0)
    max_size: int = Field(default=10, ge=1)
    pooler: PoolerMode = "auto"
    ssl: SslMode | None = None
    ssl_root_cert: Path | None = None
    application_name: str = "sessionstore"
    connect_timeout: float = Field(default=10.0, gt=0)
    acquire_timeout: float = Field(default=30.0, gt=0)
    command_timeout: float | None = Field(default=30.0, gt=0)
    statement_timeout: float | None = Field(default=None, gt=0)
    max_inactive_connection_lifetime: float = Field(default=300.0, ge=0)
    default_ttl: timedelta | None = timedelta(hours=24)
    sliding_expiry: bool = False
    cache_size: int = Field(default=1024, ge=0)
    cache_ttl: float = Field(default=2.0, ge=0)
    notifications: bool = True
    batch_size: int = Field(default=500, ge=1)
    max_delay: float = Field(default=0.05, ge=0)
    max_pending: int = Field(default=10_000, ge=1)
    write_deadline: float = Field(default=30.0, gt=0)
    spill_path: Path | None = None
    encryption_key: SecretStr | None = Field(default=None, repr=False)
    key_cache_ttl: float = Field(default=60.0, ge=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The usual sources, then the environment's ``DATABASE_URL`` (which counts only
        when no other source gives a DSN)."""
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
            _FallbackUrl(settings_cls),
        )

    @model_validator(mode="before")
    @classmethod
    def _pick_dsn(cls, data: Any) -> Any:
        """Keep the most binding DSN source, skip a foreign ``DATABASE_URL``, check it.

        The sources may each hand over a URL (code as ``dsn``, the environment under the
        variables' names); only the most binding one counts, or fails.
        """
        if not isinstance(data, dict):
            return data
        data = dict(data)
        found = [(name, data.pop(name)) for name in _DSN_SOURCES if name in data]
        found = [
            (name, value)
            for name, value in found
            if value != "" and not (name == "DATABASE_URL" and not _postgres(value))
        ]
        if not found:
            return data
        name, value = found[0]
        source = "the database URL" if name == "dsn" else name
        data["dsn"] = _FromSource(source, value) if isinstance(value, str) else value
        return data

    @field_validator("dsn", mode="before")
    @classmethod
    def _check_dsn(cls, value: Any) -> Any:
        # Checked here, not above, so that an error is filed under the field ("dsn").
        if isinstance(value, _FromSource):
            check_dsn(value.url, source=value.source)
            return value.url
        return value

    @field_validator("default_ttl", mode="before")
    @classmethod
    def _read_ttl(cls, value: Any) -> Any:
        # What the docs promise the environment takes besides ISO 8601 (PT24H): "null" or
        # "none" for no expiry, and plain seconds ("3600"), which pydantic's duration
        # parser reads as neither.
        if isinstance(value, str):
            text = value.strip()
            if text.lower() in ("null", "none", ""):
                return None
            try:
                return timedelta(seconds=float(text))
            except (ValueError, OverflowError):
                return value
        return value

    @field_validator("default_ttl")
    @classmethod
    def _check_ttl(cls, value: timedelta | None) -> timedelta | None:
        # A session's ttl rule; InvalidInputError is a ValueError, which pydantic reports.
        return None if value is None else ttl(value, "default_ttl")

    @field_validator("encryption_key", mode="before")
    @classmethod
    def _read_key(cls, value: Any) -> Any:
        # Raw key bytes as base64 text; then checked: 32 bytes, else one sentence that
        # quotes nothing (hide_input_in_errors keeps pydantic quiet too).
        if isinstance(value, bytes | bytearray):
            value = (
                base64.b64encode(value).decode()
                if len(value) == KEY_BYTES
                else value.decode("ascii", "replace")
            )
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None:
            return None
        if value == "":  # a secret that failed to render must not turn encryption off
            raise ValueError("is empty: give a key (base64 of 32 bytes) or leave it unset")
        if not isinstance(value, str):
            raise ValueError("must be 32 bytes, or base64 of 32 bytes")
        master_key(value)
        return value

    @field_validator("ssl_root_cert")
    @classmethod
    def _check_root_cert(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("max_size")
    @classmethod
    def _check_sizes(cls, value: int, info: Any) -> int:
        min_size = info.data.get("min_size", 0)
        if value < min_size:
            raise ValueError(f"must be >= min_size ({min_size})")
        return value

    def ssl_argument(self) -> SslMode | SSLContext | None:
        """What asyncpg's ``ssl`` parameter gets: ``None`` leaves it to the DSN's ``sslmode``.

        With ``ssl_root_cert`` the server certificate is verified against that CA file:
        ``verify-ca`` checks the chain, ``verify-full`` (the default when only the file
        is given) also the host name.
        """
        if self.ssl_root_cert is None:
            return self.ssl
        mode = self.ssl or "verify-full"
        if mode not in ("verify-ca", "verify-full"):
            raise ValueError(f"ssl_root_cert needs ssl verify-ca or verify-full, not {mode}")
        context = create_default_context(cafile=str(self.ssl_root_cert))
        context.check_hostname = mode == "verify-full"
        return context

    @property
    def sliding_interval(self) -> timedelta | None:
        """How far each turn pushes a session's ``expires_at`` (to at least now + this):
        ``default_ttl`` with ``sliding_expiry``, else ``None`` (expiry does not move)."""
        return self.default_ttl if self.sliding_expiry else None

    @property
    def effective_pooler(self) -> Literal["none", "transaction", "session"]:
        """The pooler mode in force: ``auto`` becomes ``transaction`` when a host's port
        is 6543 — with several hosts, when any of them is: transaction-mode settings work
        on a direct server too, while direct-mode ones break behind such a pooler."""
        if self.pooler != "auto":
            return self.pooler
        ports = check_dsn(self.dsn).ports if self.dsn else ()
        return "transaction" if SUPABASE_TRANSACTION_PORT in ports else "none"

    @classmethod
    def load(cls, base: StoreConfig | None = None, /, **settings: Any) -> Self:
        """A config from ``settings`` over ``base`` (default: over the environment).

        A bad or unknown setting raises :class:`~sessionstore.errors.InvalidInputError`
        naming it, never pydantic's ``ValidationError``, and never quoting the value.
        ``dsn=None`` counts as not given. With ``base`` the environment is not read
        again; without it, a ``dsn`` in ``settings`` means no DSN variable is read.
        """
        if settings.get("dsn", "") is None:
            del settings["dsn"]
        try:
            if base is None:
                return cls(**settings)
            if not settings and isinstance(base, cls):
                return base
            return cls.model_validate({**base.model_dump(), **settings})
        except ValidationError as exc:
            raise _as_invalid_input(exc) from None

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # getattr: pytest and tracebacks may show an instance whose validation failed.
        yield "dsn", redact_dsn(getattr(self, "dsn", None))
        yield from super().__repr_args__()
