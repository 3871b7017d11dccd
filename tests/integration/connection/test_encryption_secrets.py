"""The secrets probe for encryption at rest (issue #28): no form of a master key, of a
key provider's secret or of any user's data key, and nothing people wrote, in any span,
metric data point, log record (at DEBUG), error, ``repr`` or CLI output — across every
path that seals or opens, and the paths that fail.

The spans and metrics are read with the real OpenTelemetry SDK's in-memory exporter and
reader, whole (their JSON) and field by field. Data keys never leave
:class:`~sessionstore.crypto.DataKey` (AES-GCM keeps no readable key), so they are
recorded where they are made: ``DataKey.__init__`` is wrapped for the test, and the
test's own provider records what it wraps and unwraps. The probe then checks that every
data key stored was among those recorded: a probe that missed one would prove nothing.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import traceback
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from typer.testing import CliRunner, Result

import sessionstore
from sessionstore import (
    ContinuationId,
    EncryptionError,
    KeyProvider,
    MasterKey,
    SessionStore,
)
from sessionstore.cli import app
from sessionstore.crypto import DataKey

from ...conftest import store_overrides
from .conftest import in_memory_telemetry
from .test_secrets import command_output, error_texts

#: In content and metadata of every message written: it must show in no telemetry or log,
#: whole or cut. Letters g to v: no piece of it can be mistaken for a hex id.
MARK = "Qz" + "".join(chr(ord("g") + int(c, 16)) for c in uuid.uuid4().hex[:16])
MARK_PIECES = {MARK[i : i + 8] for i in range(2, len(MARK) - 7)}
KEY_RAW = os.urandom(32)
KEY = base64.b64encode(KEY_RAW).decode()
SECOND_RAW = os.urandom(32)
SECOND = base64.b64encode(SECOND_RAW).decode()
#: The test provider's master keys, and a credential of the kind a KMS client holds.
PROVIDER_RAW = os.urandom(32)
PROVIDER_SECOND_RAW = os.urandom(32)
TOKEN = f"KmsToken{uuid.uuid4().hex}"

runner = CliRunner()


# -- what a leak looks like ------------------------------------------------------------


def forms(raw: bytes) -> set[str]:
    """Every text form of the secret ``raw`` a leak might take — base64 (standard and
    URL-safe, padded or not), hex in either case, the bytes' ``repr``, their Latin-1
    text, their list of numbers — and 12-byte pieces of the encodings and of the
    ``repr`` (a key cut short is still a leak)."""
    b64 = base64.b64encode(raw).decode().rstrip("=")
    url = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    hexed = raw.hex()
    found = {
        b64,
        url,
        hexed,
        hexed.upper(),
        repr(raw)[2:-1],
        raw.decode("latin-1"),
        str(list(raw))[1:-1],
    }
    for text in (b64, url):
        found |= {text[i : i + 16] for i in range(0, len(text) - 15, 4)}
    for text in (hexed, hexed.upper()):
        found |= {text[i : i + 24] for i in range(0, len(text) - 23, 2)}
    found |= {repr(raw[i : i + 12])[2:-1] for i in range(len(raw) - 11)}
    return found


def leaks(texts: list[str], secrets: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(secret's name, the text around it) for each secret form found in ``texts``."""
    found = []
    for text in texts:
        for name, shapes in secrets.items():
            for shape in shapes:
                at = text.find(shape)
                if at >= 0:
                    found.append((name, text[max(0, at - 80) : at + len(shape) + 80]))
                    break
    return found


def test_the_probe_finds_every_form() -> None:
    """The detector itself: each form, whole or cut, is found; unrelated text is not."""
    secrets = {"key": forms(KEY_RAW)}
    for leaked in (
        KEY,
        KEY.rstrip("="),
        base64.urlsafe_b64encode(KEY_RAW).decode(),
        KEY_RAW.hex(),
        KEY_RAW.hex().upper(),
        repr(KEY_RAW),
        f"key={KEY_RAW!r}",
        KEY_RAW.decode("latin-1"),
        str(list(KEY_RAW)),
        KEY[8:30],
        KEY_RAW.hex()[10:40],
        repr(KEY_RAW[3:17]),
    ):
        assert leaks([f"...{leaked}..."], secrets), leaked
    assert not leaks([SECOND, SECOND_RAW.hex(), "local:0123456789abcdef", MARK], secrets)
    assert leaks([f"turn {MARK[:12]}…"], {"content": MARK_PIECES})


# -- what is captured ------------------------------------------------------------------


class Records(logging.Handler):
    """Keeps every record that reaches the root logger, at any level.

    Not caplog's handler: pytest gives each test phase a handler of its own at the
    ``log_level`` setting (INFO here), so a level set on caplog from a fixture no longer
    holds when the test body runs, and DEBUG records would go unseen.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        """Each record formatted (its traceback too), its message, its arguments, and
        every error it carries."""
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        texts: list[str] = []
        for record in self.records:
            texts += [formatter.format(record), record.getMessage(), str(record.msg)]
            texts += [repr(record.args), record.exc_text or ""]
            if record.exc_info and record.exc_info[1] is not None:
                texts += error_texts(record.exc_info[1])
        return texts

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@dataclass
class Probe:
    """Every place a secret could leave by: spans, metrics and log records."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    logs: Records
    texts: list[str] = field(default_factory=list)

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def names(self) -> set[str]:
        return {span.name for span in self.finished()}

    def collect_metrics(self) -> None:
        """Read every metric now: the pool, queue and cache instruments are observed
        only while a store is open, so this runs before each store closes."""
        data = self.reader.get_metrics_data()
        if data is None:
            return
        self.texts.append(data.to_json())
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    self.texts += [metric.name, metric.description or "", metric.unit or ""]
                    for point in metric.data.data_points:
                        self.texts += _attribute_texts(point.attributes)
                        for exemplar in getattr(point, "exemplars", None) or ():
                            self.texts += _attribute_texts(exemplar.filtered_attributes)

    def everything(self) -> list[str]:
        """What the spans, the metrics read and the log records hold, as text."""
        texts = list(self.texts)
        for span in self.finished():
            texts += [span.to_json(), span.name, str(span.status.description)]
            texts += _attribute_texts(span.attributes)
            for event in span.events:
                texts.append(event.name)
                texts += _attribute_texts(event.attributes)
            for link in span.links:
                texts += _attribute_texts(link.attributes)
        return texts + self.logs.texts()


def _attribute_texts(attributes: Any) -> list[str]:
    texts: list[str] = []
    for key, value in dict(attributes or {}).items():
        texts += [str(key), str(value), repr(value)]
    return texts


@pytest.fixture
def probe(caplog: pytest.LogCaptureFixture) -> Iterator[Probe]:
    """The SDK's in-memory ends wired to sessionstore, and every log record at DEBUG
    (caplog only sets the loggers' levels, and restores them)."""
    caplog.set_level(logging.DEBUG)
    for name in ("sessionstore", "asyncpg", "alembic"):
        caplog.set_level(logging.DEBUG, logger=name)
    logs = Records()
    logging.getLogger().addHandler(logs)
    with in_memory_telemetry() as (spans, reader, _):
        yield Probe(spans, reader, logs)
    logging.getLogger().removeHandler(logs)


@pytest.fixture
def data_keys(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every data key this process unwraps or creates from now on (the CLI's included:
    it runs in this process), as ``DataKey`` receives it."""
    seen: list[bytes] = []
    made = DataKey.__init__

    def recording(self: DataKey, key_id: UUID, key: bytes) -> None:
        seen.append(bytes(key))
        made(self, key_id, key)

    monkeypatch.setattr(DataKey, "__init__", recording)
    return seen


class CanaryProvider:
    """A KMS stand-in: its ``key_id`` is harmless, its master key and its credential are
    canaries, and it records every data key it wraps or unwraps. ``failing`` makes it
    fail as a KMS client might: with an error quoting its credential and its key."""

    def __init__(self, key_id: str, secret: bytes, seen: list[bytes]) -> None:
        self._key_id = key_id
        self._secret = secret
        self._aead = AESGCM(secret)
        self._seen = seen
        self.failing = False

    @property
    def key_id(self) -> str:
        """Names the master key; not secret."""
        return self._key_id

    def _refuse(self) -> None:
        if self.failing:
            raise RuntimeError(f"KMS refused (token {TOKEN}, key {self._secret.hex()})")

    async def wrap(self, data_key: bytes) -> bytes:
        """``data_key`` under this master key, bound to the credential."""
        self._refuse()
        self._seen.append(bytes(data_key))
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, data_key, TOKEN.encode())

    async def unwrap(self, wrapped: bytes, key_id: str) -> bytes:
        """The data key in ``wrapped``."""
        self._refuse()
        if key_id != self._key_id:
            raise LookupError(f"no master key {key_id!r} for token {TOKEN}")
        key = self._aead.decrypt(wrapped[:12], wrapped[12:], TOKEN.encode())
        self._seen.append(key)
        return key


def secrets_of(data_keys: list[bytes]) -> dict[str, set[str]]:
    """The secrets to look for: both master keys, the provider's keys and credential,
    and each data key recorded."""
    secrets = {
        "encryption_key": forms(KEY_RAW),
        "second encryption_key": forms(SECOND_RAW),
        "provider master key": forms(PROVIDER_RAW),
        "provider second master key": forms(PROVIDER_SECOND_RAW),
        "provider credential": {TOKEN},
    }
    for n, key in enumerate(dict.fromkeys(data_keys)):
        secrets[f"data key {n}"] = forms(key)
    return secrets


def assert_nothing_secret(texts: list[str], data_keys: list[bytes]) -> None:
    found = leaks(texts, {**secrets_of(data_keys), "message content": MARK_PIECES})
    assert not found, found


def reprs(store: SessionStore) -> list[str]:
    """What printing the store, its settings, its key ring and its cached keys shows."""
    keys = store._db.keys
    assert keys is not None
    cached = [repr(entry) for entry in keys._keys.values()]
    config = store.config
    return [
        repr(store),
        repr(config),
        str(config),
        str(config.model_dump()),
        config.model_dump_json(),
        repr(keys),
        repr(keys.provider),
        repr(store.stats()),
        *cached,
    ]


# -- every path that seals or opens ----------------------------------------------------

META = {"note": f"meta {MARK}", "deep": [{"x": MARK}]}
CONVERSATIONS = ("c-turn", "c-plain", "c-fork", "c-fork-unbound", "c-unbound")


async def write_and_read_everything(store: SessionStore, probe: Probe) -> list[str]:
    """One message of each write path (MARK in content and metadata), then each read
    path; returns the contents read back."""
    alice = await store.sessions.create("alice")
    await store.add_turn("c-turn", "user", f"turn {MARK}", session_id=alice.id, metadata=META)
    await store.add_turn(
        "c-turn", "user", f"ctx {MARK}", session_id=alice.id, metadata=META, context=5
    )
    await store.enqueue_turn(
        "c-turn", "assistant", f"queued {MARK}", session_id=alice.id, metadata=META
    )
    await store.flush()
    # A queued reply handed over to the next add_turn, written in its statement.
    await store.enqueue_turn("c-turn", "assistant", f"handover {MARK}", session_id=alice.id)
    await store.add_turn("c-turn", "user", f"after {MARK}", session_id=alice.id, context=10)
    plain = await store.conversations.get_or_create("c-plain", session_id=alice.id)
    await store.messages.add(plain.id, "user", f"add {MARK}", metadata=META)
    await store.messages.add_many(
        plain.id, [("user", f"many {MARK}", META), ("assistant", f"many2 {MARK}")]
    )
    await store.messages.add_many(
        plain.id, [("user", f"many-turn {MARK}", META)], session_id=alice.id
    )
    await store.messages.enqueue(plain.id, "assistant", f"enqueued {MARK}", metadata=META)
    await store.messages.add(plain.id, "user", f"to pop {MARK}")
    await store.flush()
    popped = await store.messages.pop(plain.id)
    assert popped is not None
    await store.messages.compact(plain.id, through_seq=2, summary=f"summary {MARK}", metadata=META)
    await store.conversations.fork(plain.id, continuation_id="c-fork", session_id=alice.id)
    await store.conversations.fork(plain.id, continuation_id="c-fork-unbound")
    unbound = await store.conversations.get_or_create("c-unbound")
    await store.messages.add(unbound.id, "user", f"unbound {MARK}", metadata=META)
    probe.collect_metrics()
    read = [popped.content]
    for name in CONVERSATIONS:
        ref = ContinuationId(name)
        read += [m.content for m in await store.messages.history(ref, include_compacted=True)]
        read += [m.content for m in await store.messages.history(ref, max_tokens=1000)]
    return read


async def rotate_then_purge(
    store: SessionStore, new: str | KeyProvider, probe: Probe, conn: asyncpg.Connection
) -> tuple[int, list[str]]:
    """Rotation to ``new`` one key per batch, a new user's key under it, then
    ``purge_user``: how many keys were re-wrapped, and what was read after."""
    progress: list[int] = []
    rotated = await store.rotate_master_key(new, batch_size=1, on_progress=progress.append)
    assert progress == list(range(1, rotated + 1))
    bob = await store.sessions.create("bob")
    await store.add_turn("c-bob", "user", f"bob {MARK}", session_id=bob.id, metadata=META)
    read = [m.content for m in await store.messages.history(ContinuationId("c-bob"))]
    read += [m.content for m in await store.messages.history(ContinuationId("c-turn"))]
    probe.collect_metrics()
    counts = await store.purge_user("alice")
    assert counts.messages > 0
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM sessionstore_private.keys WHERE user_id = 'alice'"
        )
        == 0
    )
    return rotated, read


async def stored_data_keys(conn: asyncpg.Connection, provider: KeyProvider) -> list[bytes]:
    """Every data key in ``sessionstore_private.keys``, unwrapped by ``provider``."""
    rows = await conn.fetch("SELECT wrapped, master_key_id FROM sessionstore_private.keys")
    return [await provider.unwrap(bytes(r["wrapped"]), r["master_key_id"]) for r in rows]


async def cli(*args: str, key: str | None) -> Result:
    env = {"SESSIONSTORE_ENCRYPTION_KEY": key}
    return await asyncio.to_thread(runner.invoke, app, list(args), env=env)


async def write_in_clear(store: SessionStore, user: str) -> None:
    """A turn of ``user`` stored in clear (``store`` has no key), MARK in it."""
    session = await store.sessions.create(user)
    await store.add_turn(
        f"c-clear-{user}", "user", f"clear {MARK}", session_id=session.id, metadata=META
    )


EXPECTED_SPANS = {
    "create sessions",
    "add messages",
    "add_many messages",
    "enqueue messages",
    "history messages",
    "pop messages",
    "compact messages",
    "fork conversations",
    "get_or_create conversations",
}


def assert_telemetry_ran(probe: Probe, database: str, may_fail: str = "") -> None:
    """The paths ran under telemetry (spans and metrics read: the probe looked at
    something), and no span recorded an event or failed — but for spans of the
    operation ``may_fail``, which may fail with ``EncryptionError``, saying no more."""
    metrics = "\n".join(probe.texts)
    for metric in ("db.client.operation.duration", "sessionstore.write_behind.written"):
        assert metric in metrics, metric
    names = probe.names()
    assert names >= EXPECTED_SPANS, sorted(names)
    for operation in ("add_turn", "enqueue_turn", "flush", "write_behind", "purge_user"):
        assert f"{operation} {database}" in names, sorted(names)
    assert "rotate_master_key" in " ".join(names), sorted(names)
    for span in probe.finished():
        assert not span.events, span.name
        if may_fail and span.name.split(" ")[0] == may_fail:
            assert not span.status.description, span.name
            assert span.attributes is not None
            error = span.attributes.get("error.type", "sessionstore.errors.EncryptionError")
            assert error == "sessionstore.errors.EncryptionError", span.name
            continue
        assert span.status.status_code is StatusCode.UNSET, span.name


def database_of(dsn: str) -> str:
    """The database a URL names (its path: a socket directory in the query has slashes)."""
    return dsn.split("?", 1)[0].rsplit("/", 1)[1]


async def test_the_encryption_key_shows_nowhere(
    dsn: str,
    admin_dsn: str,
    store: SessionStore,
    conn: asyncpg.Connection,
    probe: Probe,
    data_keys: list[bytes],
) -> None:
    """``encryption_key=``: every sealing and opening path, rotation to a second key,
    purge_user, and ``sessionstore encrypt`` under SESSIONSTORE_ENCRYPTION_KEY."""
    texts: list[str] = []
    async with sessionstore.connect(dsn, encryption_key=KEY, **store_overrides()) as sealed:
        read = await write_and_read_everything(sealed, probe)
        texts += reprs(sealed)
        stored = await stored_data_keys(conn, MasterKey(KEY))
        rotated, after = await rotate_then_purge(sealed, SECOND, probe, conn)
        assert rotated == len(stored) == 2  # alice's and no user's
        texts += reprs(sealed)
        # Messages stored in clear, sealed by the command with the new key.
        await write_in_clear(store, "carol")
        stored += await stored_data_keys(conn, MasterKey(SECOND))
        result = await cli("encrypt", "--dsn", admin_dsn, "--batch-size", "1", key=SECOND)
        assert result.exit_code == 0, result.output
        assert "encrypted 1 messages stored in clear" in " ".join(result.output.split())
        texts += command_output(result)
        after += [m.content for m in await sealed.messages.history(ContinuationId("c-clear-carol"))]
        stored += await stored_data_keys(conn, MasterKey(SECOND))
        texts += reprs(sealed)
        probe.collect_metrics()
    assert await conn.fetchval("SELECT count(*) FROM messages WHERE content_sealed IS NULL") == 0
    # Everything ran and read back: the marks were there to be found.
    assert len([c for c in read if MARK in c]) >= 20
    assert f"bob {MARK}" in after
    assert f"clear {MARK}" in after
    assert set(stored) <= set(data_keys), "a data key the probe did not record"
    assert len(set(stored)) == 4  # alice's, no user's, bob's, carol's
    assert_telemetry_ran(probe, database_of(dsn))
    assert_nothing_secret(texts + probe.everything(), data_keys)


async def test_a_key_providers_secrets_show_nowhere(
    dsn: str,
    admin_dsn: str,
    store: SessionStore,
    conn: asyncpg.Connection,
    probe: Probe,
    data_keys: list[bytes],
) -> None:
    """``key_provider=``: the same paths, rotation to a second provider, and the command
    refusing keys another master key wrapped."""
    provider = CanaryProvider("kms:first", PROVIDER_RAW, data_keys)
    second = CanaryProvider("kms:second", PROVIDER_SECOND_RAW, data_keys)
    texts: list[str] = []
    async with sessionstore.connect(dsn, key_provider=provider, **store_overrides()) as sealed:
        read = await write_and_read_everything(sealed, probe)
        texts += reprs(sealed)
        stored = await stored_data_keys(conn, provider)
        rotated, after = await rotate_then_purge(sealed, second, probe, conn)
        assert rotated == len(stored) == 2
        stored += await stored_data_keys(conn, second)
        texts += reprs(sealed)
        probe.collect_metrics()
        # bob's key is wrapped by kms:second: the command, with a local key, cannot
        # open it, and says so in one sentence.
        await write_in_clear(store, "bob")
        refused = await cli("encrypt", "--dsn", admin_dsn, key=SECOND)
        assert refused.exit_code == 1, refused.output
        assert "error:" in refused.output
        assert "Traceback" not in refused.output
        texts += command_output(refused)
    assert len([c for c in read if MARK in c]) >= 20
    assert f"bob {MARK}" in after
    assert set(stored) <= set(data_keys), "a data key the probe did not record"
    assert len(set(stored)) == 3
    assert_telemetry_ran(probe, database_of(dsn), may_fail="encrypt_stored")
    assert_nothing_secret(texts + probe.everything(), data_keys)


# -- paths that fail -------------------------------------------------------------------


def failed_spans(probe: Probe, name: str) -> list[ReadableSpan]:
    """The spans named ``name`` that ended in error: each says only the error's class."""
    spans = [s for s in probe.finished() if s.name == name]
    assert spans, (name, sorted(probe.names()))
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR, name
        assert not span.status.description, name
        assert not span.events, name
        assert span.attributes is not None
        assert span.attributes["error.type"] == "sessionstore.errors.EncryptionError", name
    return spans


async def test_failures_say_nothing_of_keys_or_content(
    dsn: str, conn: asyncpg.Connection, probe: Probe, data_keys: list[bytes]
) -> None:
    """Another master key, no key, and a destroyed data key: ``EncryptionError`` in one
    sentence, and spans that name only its class."""
    errors: list[BaseException] = []
    async with sessionstore.connect(dsn, encryption_key=KEY, **store_overrides()) as sealed:
        alice = await sealed.sessions.create("alice")
        await sealed.add_turn("c-a", "user", f"turn {MARK}", session_id=alice.id, metadata=META)
        stored = await stored_data_keys(conn, MasterKey(KEY))
    assert set(stored) <= set(data_keys)
    probe.spans.clear()

    async with sessionstore.connect(dsn, encryption_key=SECOND, **store_overrides()) as other:
        with pytest.raises(EncryptionError) as wrong_read:
            await other.messages.history(ContinuationId("c-a"))
        with pytest.raises(EncryptionError) as wrong_write:
            await other.add_turn("c-a", "user", f"more {MARK}", session_id=alice.id)
        # Queued: the writer cannot seal it and sets it aside (logged, without content).
        await other.enqueue_turn("c-a", "assistant", f"queued {MARK}", session_id=alice.id)
        await other.flush()
        assert other.stats().set_aside == 1
        probe.collect_metrics()
        errors += [wrong_read.value, wrong_write.value]
    async with sessionstore.connect(dsn, **store_overrides()) as keyless:
        with pytest.raises(EncryptionError) as no_key:
            await keyless.messages.history(ContinuationId("c-a"))
        errors.append(no_key.value)
    # The key destroyed (as purge_user does) under rows restored from a backup.
    await conn.execute("DELETE FROM sessionstore_private.keys WHERE user_id = 'alice'")
    async with sessionstore.connect(dsn, encryption_key=KEY, **store_overrides()) as fresh:
        with pytest.raises(EncryptionError, match="no longer exist") as destroyed:
            await fresh.messages.history(ContinuationId("c-a"))
        errors.append(destroyed.value)
        probe.collect_metrics()

    assert len(failed_spans(probe, "history messages")) == 3
    failed_spans(probe, f"add_turn {database_of(dsn)}")
    failed_spans(probe, f"write_behind {database_of(dsn)}")
    set_aside = [m for m in probe.logs.messages() if "set aside" in m]
    assert len(set_aside) == 1, set_aside
    texts = probe.everything()
    for error in errors:
        assert "\n" not in str(error)
        texts += error_texts(error)
    assert_nothing_secret(texts, data_keys)


async def failure_of(call: Awaitable[object]) -> Exception:
    """The exception ``call`` raises, whatever it is (what the provider's failure became
    is what the tests look at)."""
    try:
        await call
    except Exception as exc:
        return exc
    raise AssertionError("the call did not fail")


async def provider_failure(
    scenario: str, dsn: str, probe: Probe, data_keys: list[bytes]
) -> BaseException:
    """A provider failing as a KMS client might (its error quotes its credential and its
    key) while the store reads (``read``), rotates away from it (``rotate``: unwrapping)
    or to it (``rotate_wrap``: wrapping), creates a user's data key (``wrap``) or writes
    a queued turn needing one (``write_behind``): the error the application gets."""
    provider = CanaryProvider("kms:first", PROVIDER_RAW, data_keys)
    second = CanaryProvider("kms:second", PROVIDER_SECOND_RAW, data_keys)
    overrides = {**store_overrides(), "write_deadline": 1.0}
    sealed = await sessionstore.connect(dsn, key_provider=provider, **overrides)
    try:
        session = await sealed.sessions.create("alice")
        if scenario in ("read", "rotate", "rotate_wrap"):
            await sealed.add_turn("c-a", "user", f"turn {MARK}", session_id=session.id)
        (second if scenario == "rotate_wrap" else provider).failing = True

        async def read_fresh() -> None:  # a store with nothing cached
            async with sessionstore.connect(dsn, key_provider=provider, **overrides) as fresh:
                try:
                    await fresh.messages.history(ContinuationId("c-a"))
                finally:
                    probe.collect_metrics()

        async def write_behind() -> None:
            await sealed.enqueue_turn("c-a", "user", f"turn {MARK}", session_id=session.id)
            await sealed.flush()  # the writer retries until write_deadline

        calls = {
            "read": read_fresh,
            "rotate": lambda: sealed.rotate_master_key(second),
            "rotate_wrap": lambda: sealed.rotate_master_key(second),
            "wrap": lambda: sealed.add_turn("c-a", "user", f"turn {MARK}", session_id=session.id),
            "write_behind": write_behind,
        }
        failed = await failure_of(calls[scenario]())
        probe.collect_metrics()
    finally:
        provider.failing = second.failing = False
        if scenario == "write_behind":
            # The queued turn is past write_deadline: reported, not spilled (no spill_path).
            with pytest.raises(sessionstore.WriteBehindError):
                await sealed.close()
        else:
            await sealed.close()
    return failed


def rendered(error: BaseException) -> list[str]:
    """What a log line or an error report shows of ``error``: its traceback (with the
    chain Python prints) and its text."""
    return ["".join(traceback.format_exception(error)), str(error), repr(error)]


@pytest.mark.parametrize("scenario", ["read", "rotate", "rotate_wrap", "wrap", "write_behind"])
async def test_a_failing_provider_leaves_nothing_in_spans_metrics_or_logs(
    scenario: str, dsn: str, probe: Probe, data_keys: list[bytes]
) -> None:
    """Whatever the provider's error says, the spans name only its class, and the logs
    (the writer's retries included) quote none of it."""
    error = await provider_failure(scenario, dsn, probe, data_keys)
    failed = [s for s in probe.finished() if s.status.status_code is StatusCode.ERROR]
    assert failed, sorted(probe.names())
    for span in failed:
        assert not span.status.description, span.name
        assert not span.events, span.name
    texts = probe.everything()
    if scenario == "read":
        assert isinstance(error, EncryptionError)
        assert "could not unwrap" in str(error)
        failed_spans(probe, "history messages")
        texts += rendered(error)
    if scenario == "write_behind":
        assert isinstance(error, sessionstore.WriteBehindError)
        texts += error_texts(error)
        # The writer's retries, logged at DEBUG, were seen (and probed).
        retries = [
            r.getMessage()
            for r in probe.logs.records
            if r.levelno == logging.DEBUG and r.name == "sessionstore"
        ]
        assert [m for m in retries if "write-behind batch of 1 failed" in m], retries
    assert_nothing_secret(texts, data_keys)


@pytest.mark.parametrize(
    "scenario",
    [
        "read",
        "rotate",
        "rotate_wrap",
        "wrap",
    ],
)
async def test_a_failing_provider_is_an_encryption_error_saying_none_of_its_text(
    scenario: str, dsn: str, probe: Probe, data_keys: list[bytes]
) -> None:
    """``KeyProvider``'s promise: any exception of the provider is reported as
    ``EncryptionError``, without its text (in the error's text or its traceback)."""
    error = await provider_failure(scenario, dsn, probe, data_keys)
    assert isinstance(error, EncryptionError), repr(error)
    assert "\n" not in str(error)
    assert_nothing_secret(rendered(error), data_keys)


@pytest.mark.parametrize(
    "scenario",
    [
        "read",
        "rotate",
    ],
)
async def test_a_failing_provider_s_error_is_not_kept_on_the_encryption_error(
    scenario: str, dsn: str, probe: Probe, data_keys: list[bytes]
) -> None:
    """Stricter: nor is the provider's exception kept on the ``EncryptionError``
    (``__cause__`` or ``__context__``), where an error reporter walking the chain, or
    code logging ``error.__context__``, would find its text."""
    error = await provider_failure(scenario, dsn, probe, data_keys)
    assert isinstance(error, EncryptionError), repr(error)
    assert_nothing_secret(error_texts(error), data_keys)
