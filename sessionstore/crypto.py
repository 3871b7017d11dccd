"""Envelope encryption: a data key per user, wrapped by a master key the application holds.

A sealed value (a ``bytea``) is ``0x01 | data key id (16 bytes) | nonce (12) |
AES-256-GCM ciphertext | tag (16)``: exactly :data:`SEALED_OVERHEAD` bytes longer than
what it seals, so SQL can still count a sealed message's bytes (its token estimate)
without the key. The associated data is the version, the data key id and the identity
of the place the value was written for (a table, a column and the row's id): a value
copied onto another row, or into another column, fails authentication and is refused,
never read as that row's.

A master key wraps data keys only; it never touches a message. :class:`MasterKey` holds
master keys in memory; any :class:`KeyProvider` (a KMS, Vault) can stand in for it.
Nothing here logs, and no ``repr`` or error shows a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import os
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from uuid import UUID

from .errors import EncryptionError, InvalidInputError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_BYTES",
    "SEALED_OVERHEAD",
    "ChainedProvider",
    "DataKey",
    "KeyProvider",
    "MasterKey",
    "master_key",
    "sealed_key_id",
]

#: Master and data keys are AES-256 keys.
KEY_BYTES = 32
_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEAD = len(_VERSION) + 16 + _NONCE_BYTES
#: How many bytes a sealed value is longer than what it seals.
SEALED_OVERHEAD = _HEAD + _TAG_BYTES
# What a message's sealed content and metadata are bound to, with the message's id.
_CONTENT = b"messages.content\x00"
_METADATA = b"messages.metadata\x00"
# Bound into every wrapped data key: a wrapped key is never confused with anything else
# the same master key might encrypt.
_WRAP_AAD = b"sessionstore data key v1"


def _aesgcm(key: bytes) -> AESGCM:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # the optional extra
        raise InvalidInputError(
            "encryption_key", "needs the crypto extra: pip install 'sessionstore[crypto]'"
        ) from None
    return AESGCM(key)


def _key_bytes(value: str | bytes, field: str) -> bytes:
    """32 key bytes from ``value``: the bytes themselves, or base64 of them (text or
    bytes). The error names ``field``, never the value."""
    if isinstance(value, bytes | bytearray) and len(value) == KEY_BYTES:
        return bytes(value)
    if isinstance(value, str | bytes | bytearray):
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == KEY_BYTES:
            return raw
    raise InvalidInputError(field, f"must be {KEY_BYTES} bytes, or base64 of {KEY_BYTES} bytes")


@runtime_checkable
class KeyProvider(Protocol):
    """Holds the master key: wraps and unwraps data keys (32 random bytes each).

    An implementation may call a KMS: AWS KMS ``Encrypt``/``Decrypt``, Google Cloud KMS
    ``encrypt``/``decrypt``, HashiCorp Vault's transit engine. It is called once per
    data key created, and once per data key a process reads first (then cached).
    """

    @property
    def key_id(self) -> str:
        """Names the master key :meth:`wrap` uses now (not secret: it is stored beside
        each wrapped data key, so rotation knows what is still to re-wrap)."""
        ...

    async def wrap(self, data_key: bytes) -> bytes:
        """``data_key`` encrypted with the master key :attr:`key_id` names."""
        ...

    async def unwrap(self, wrapped: bytes, key_id: str) -> bytes:
        """The data key :meth:`wrap` returned ``wrapped`` for, under master key
        ``key_id``. Raise any exception when it cannot: sessionstore reports it as
        :class:`~sessionstore.errors.EncryptionError`, without the exception's text."""
        ...


class MasterKey:
    """A :class:`KeyProvider` holding master keys in this process: ``key`` wraps new data
    keys, and ``key`` or any of ``previous`` unwraps what it wrapped (during a rotation
    every process must be able to open both).

    A key is 32 bytes, or base64 of 32 bytes. Its :attr:`key_id` is a fingerprint (a
    SHA-256 of the key, cut to 8 bytes): it names the key without revealing it.
    """

    def __init__(self, key: str | bytes, *previous: str | bytes) -> None:
        keys = [_key_bytes(key, "encryption_key")]
        keys += [_key_bytes(k, "previous_encryption_keys") for k in previous]
        self._keys = {_fingerprint(k): _aesgcm(k) for k in reversed(keys)}
        self._current = _fingerprint(keys[0])

    @property
    def key_id(self) -> str:
        """``local:`` and the current key's fingerprint."""
        return self._current

    async def wrap(self, data_key: bytes) -> bytes:
        """``data_key`` under the current master key: nonce, then ciphertext and tag."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._keys[self._current].encrypt(nonce, data_key, _WRAP_AAD)

    async def unwrap(self, wrapped: bytes, key_id: str) -> bytes:
        """The data key in ``wrapped``; ``EncryptionError`` if no key held here is
        ``key_id`` or it does not open ``wrapped``."""
        aead = self._keys.get(key_id)
        if aead is None:
            raise EncryptionError(f"no configured master key is {key_id!r}")
        try:
            return aead.decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], _WRAP_AAD)
        except Exception:
            raise EncryptionError(f"master key {key_id!r} does not open this data key") from None

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self._current!r})"


def _fingerprint(key: bytes) -> str:
    return "local:" + hashlib.sha256(b"sessionstore master key id\x00" + key).hexdigest()[:16]


def master_key(value: str | bytes | KeyProvider, field: str = "encryption_key") -> KeyProvider:
    """``value`` as a :class:`KeyProvider`: a provider as it is, key material as a
    :class:`MasterKey`. ``InvalidInputError`` names ``field``, never the value."""
    if isinstance(value, KeyProvider):
        if not all(inspect.iscoroutinefunction(getattr(value, m)) for m in ("wrap", "unwrap")):
            # A blocking KMS client called on the event loop would stall every task.
            raise InvalidInputError(field, "wrap and unwrap must be coroutine functions")
        return value
    if not isinstance(value, str | bytes | bytearray):
        raise InvalidInputError(field, "must be a key (32 bytes, or base64) or a KeyProvider")
    return MasterKey(_key_bytes(value, field))


class ChainedProvider:
    """Several master keys at once (a rotation): the first wraps; a data key is opened by
    the one whose ``key_id`` it was wrapped under, else by each in turn (a KMS key or a
    :class:`MasterKey` may open keys wrapped under ids of its own earlier versions)."""

    _providers: list[KeyProvider]

    def __init__(self, *providers: KeyProvider) -> None:
        flat: list[KeyProvider] = []
        for provider in providers:
            inner = provider._providers if isinstance(provider, ChainedProvider) else [provider]
            flat += [p for p in inner if all(p.key_id != q.key_id for q in flat)]
        self._providers = flat

    @property
    def key_id(self) -> str:
        """The first master key's id."""
        return self._providers[0].key_id

    async def wrap(self, data_key: bytes) -> bytes:
        """``data_key`` under the first master key."""
        return await self._providers[0].wrap(data_key)

    async def unwrap(self, wrapped: bytes, key_id: str) -> bytes:
        """Opened by the master key ``key_id`` names, else by the first that can."""
        named = [p for p in self._providers if p.key_id == key_id]
        for provider in named or self._providers:
            try:
                return await provider.unwrap(wrapped, key_id)
            except Exception:
                continue
        raise EncryptionError(f"no configured master key opens a data key of {key_id!r}")

    def __repr__(self) -> str:
        return f"ChainedProvider(key_id={self.key_id!r})"


class DataKey:
    """One user's data key, unwrapped: seals and opens values bound to where they live."""

    __slots__ = ("_aead", "_content_aad", "_head", "_metadata_aad", "key_id")

    def __init__(self, key_id: UUID, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise EncryptionError(f"data key {key_id} is not {KEY_BYTES} bytes")
        self.key_id = key_id
        self._head = _VERSION + key_id.bytes
        self._content_aad = self._head + _CONTENT
        self._metadata_aad = self._head + _METADATA
        self._aead = _aesgcm(key)

    @staticmethod
    def generate() -> bytes:
        """32 fresh random bytes for a new data key."""
        return os.urandom(KEY_BYTES)

    def _seal(self, plain: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return self._head + nonce + self._aead.encrypt(nonce, plain, aad)

    def seal_message(
        self, content: bytes, metadata: bytes | None, message_id: bytes
    ) -> tuple[bytes, bytes | None]:
        """A message's content and metadata (``None``: not sealed) sealed for the
        message ``message_id`` (16 bytes): each bound to its column and that id."""
        sealed = self._seal(content, self._content_aad + message_id)
        if metadata is None:
            return sealed, None
        return sealed, self._seal(metadata, self._metadata_aad + message_id)

    def open_message(
        self, content: bytes, metadata: bytes | None, message_id: bytes
    ) -> tuple[bytes, bytes | None]:
        """A message's sealed content and metadata (``None``: not sealed) opened, both
        by this key and for the message ``message_id`` (16 bytes); ``EncryptionError``
        otherwise. The hot path of every read: one call per message, no lookups. The
        head (version, key id) is in the associated data: a value of another key or
        format fails authentication like an altered one."""
        decrypt = self._aead.decrypt
        try:
            text = decrypt(content[17:29], content[29:], self._content_aad + message_id)
            if metadata is None:
                return text, None
            meta = decrypt(metadata[17:29], metadata[29:], self._metadata_aad + message_id)
        except Exception:
            raise EncryptionError(
                "an encrypted value does not belong where it is stored (moved or altered)"
            ) from None
        return text, meta

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id})"


def sealed_key_id(sealed: bytes) -> UUID:
    """The id of the data key that sealed ``sealed``; ``EncryptionError`` if malformed."""
    if len(sealed) < SEALED_OVERHEAD or sealed[:1] != _VERSION:
        raise EncryptionError("an encrypted value is malformed (unknown format)")
    return UUID(bytes=bytes(sealed[1:17]))
