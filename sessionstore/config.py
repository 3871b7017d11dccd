"""``StoreConfig``: every knob, read from ``SESSIONSTORE_*`` environment variables or code.

The DSN comes from ``SESSIONSTORE_DATABASE_URL``, falling back to ``DATABASE_URL``.
``repr()`` and ``str()`` never show the password.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from ssl import SSLContext, create_default_context
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PoolerMode", "StoreConfig", "redact_dsn"]

PoolerMode = Literal["auto", "none", "transaction", "session"]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

#: Supabase's Supavisor serves transaction mode on this port, session mode on 5432.
SUPABASE_TRANSACTION_PORT = 6543


def redact_dsn(dsn: str | None) -> str | None:
    """Return ``dsn`` with any password replaced by ``***``."""
    if not dsn:
        return dsn
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class StoreConfig(BaseSettings):
    """Configuration of a :class:`~sessionstore.SessionStore`.

    Timeouts are in seconds. ``None`` for ``statement_timeout`` leaves the server's setting.
    """

    model_config = SettingsConfigDict(
        env_prefix="SESSIONSTORE_",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    dsn: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SESSIONSTORE_DATABASE_URL", "DATABASE_URL"),
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

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("postgres", "postgresql"):
            raise ValueError("must be a postgresql:// or postgres:// URL")
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
        """The pooler mode in force: ``auto`` becomes ``transaction`` on port 6543."""
        if self.pooler != "auto":
            return self.pooler
        port = urlsplit(self.dsn).port if self.dsn else None
        return "transaction" if port == SUPABASE_TRANSACTION_PORT else "none"

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "dsn", redact_dsn(self.dsn)
        yield from super().__repr_args__()
