"""Database URLs: checked before anything parses them, and shown only without secrets.

asyncpg reads a URL with ``urllib.parse``, which mis-splits a password holding an
unencoded ``/``, ``?``, ``#`` or ``@`` and then fails with a message quoting part of it.
:func:`check_dsn` refuses such a URL (and a foreign one) first, with one sentence as
:class:`~sessionstore.errors.InvalidInputError` that never repeats the URL.

:func:`redact_dsn` is what logs and messages show. It does not trust the URL to be
well formed: everything that could be a password is replaced by ``***`` — the user-info
password, every query value not known to be harmless (``password``, ``sslpassword``, …),
and, when the user-info looks mis-encoded, everything between ``://`` and the last ``@``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

from .errors import InvalidInputError

__all__ = [
    "POSTGRES_SCHEMES",
    "DsnHosts",
    "check_dsn",
    "hide_secrets",
    "is_postgres_url",
    "redact_dsn",
]

POSTGRES_SCHEMES = ("postgresql", "postgres")
#: A URL scheme followed by ``://``; only text that matches this is ever quoted back.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,30})://")
#: One entry of a host list: ``host``, ``host:port``, ``[v6]``, ``[v6]:port``. Host names
#: are limited to what DNS names, IP addresses and percent-encoded socket paths use.
_HOST = re.compile(r"(\[[0-9A-Za-z:.%]*\]|[\w.~%-]*)(?::(.*))?")
#: A database name shown as is; anything else in the path is hidden.
_PATH = re.compile(r"[\w.~%$-]*")
_QUERY_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
#: Query parameters whose values are shown; any other value may be a secret.
_SHOWN_PARAMETERS = frozenset(
    {
        "application_name",
        "database",
        "dbname",
        "host",
        "port",
        "sslmode",
        "sslnegotiation",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslcrl",
        "target_session_attrs",
        "user",
    }
)
#: Characters that end a URL's authority: in a user name or password they must be encoded.
_DELIMITERS = "/?#"
_ENCODE = "percent-encode the password with urllib.parse.quote(password, safe='')"
#: Shorter "secrets" are not scrubbed from free text: they would garble ordinary words.
_MIN_SECRET = 4


@dataclass(frozen=True, slots=True)
class DsnHosts:
    """The servers a URL names, in order; a port is ``None`` where the default applies."""

    hosts: tuple[str, ...]
    ports: tuple[int | None, ...]


def is_postgres_url(value: str) -> bool:
    """Whether ``value`` starts with ``postgresql://`` or ``postgres://`` (any case)."""
    match = _SCHEME.match(value)
    return match is not None and match.group(1).lower() in POSTGRES_SCHEMES


def _refuse(source: str, rule: str) -> InvalidInputError:
    return InvalidInputError("dsn", f"{source} {rule}")


def check_dsn(dsn: str, *, source: str = "the database URL") -> DsnHosts:
    """Check that asyncpg can read ``dsn`` as meant; return the hosts and ports it names.

    ``InvalidInputError("dsn", ...)`` otherwise: one sentence starting with ``source``
    (e.g. ``"SESSIONSTORE_DATABASE_URL"``) that says what to change and never contains
    the URL or any part of its user-info. Accepted: ``postgresql://`` and ``postgres://``
    URLs, several comma-separated hosts, and any query parameter asyncpg takes.
    """
    match = _SCHEME.match(dsn)
    if match is None:
        raise _refuse(
            source,
            "is not a postgresql:// URL: write it as postgresql://user:password@host:5432/db",
        )
    scheme = match.group(1).lower()
    if scheme not in POSTGRES_SCHEMES:
        base, plus, driver = scheme.partition("+")
        if plus and base in POSTGRES_SCHEMES:
            raise _refuse(
                source,
                f"is an SQLAlchemy URL ({scheme}://): drop the '+{driver}' driver suffix and "
                "start it with postgresql://",
            )
        raise _refuse(
            source,
            f"is a {scheme}:// URL, not a PostgreSQL one: sessionstore needs "
            "postgresql://user:password@host:5432/database",
        )
    rest = dsn[match.end() :]
    end = min((i for i in (rest.find(c) for c in _DELIMITERS) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    # An '@' past the authority, or two in it, means a delimiter or an '@' inside the
    # user-info: urllib and asyncpg would each cut the password somewhere else.
    userinfo, _, hostlist = authority.rpartition("@")
    if "@" in tail or "@" in userinfo or any(c in userinfo for c in "[]"):
        raise _refuse(
            source,
            "has an unencoded '/', '?', '#', '@', '[' or ']' in its user name or password: "
            + _ENCODE,
        )
    if "#" in tail:
        # asyncpg drops a fragment: here it can only be the cut-off end of a password.
        raise _refuse(
            source, "has an unencoded '#' in a password (in the query string): write it as %23"
        )
    try:
        urlsplit(dsn)
    except ValueError:
        # urllib's own complaints (brackets, bad characters) quote nothing, but are terse.
        raise _refuse(
            source,
            "cannot be read as a URL: percent-encode special characters in the user name "
            "and password with urllib.parse.quote(value, safe='')",
        ) from None
    query = tail.partition("?")[2]
    parameters: dict[str, list[str]] = {}
    if query:
        try:
            parameters = parse_qs(query, strict_parsing=True)
        except ValueError:
            raise _refuse(
                source,
                "has a malformed query string: write each parameter as name=value, joined "
                "by '&', and percent-encode '&', '=', '#' and '+' inside values",
            ) from None
    return _hosts(hostlist, source) if hostlist else _query_hosts(parameters, source)


def _port(text: str | None, source: str) -> int | None:
    if not text:
        return None
    if text.isascii() and text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    raise _refuse(
        source,
        "has a port that is not a number from 1 to 65535 (if that is a password, the "
        "@host part after it is missing)",
    )


def _hosts(hostlist: str, source: str) -> DsnHosts:
    hosts: list[str] = []
    ports: list[int | None] = []
    entries = hostlist.split(",")
    for entry in entries:
        match = _HOST.fullmatch(entry)
        if match is None:
            raise _refuse(
                source,
                "has a host that cannot be read: write host:port, an IPv6 address in "
                "brackets ([::1]:5432), several hosts separated by commas; if a password "
                "holds special characters, " + _ENCODE,
            )
        if not match.group(1) and len(entries) > 1:
            raise _refuse(source, "has an empty entry in its list of hosts")
        hosts.append(unquote(match.group(1).strip("[]")))
        ports.append(_port(match.group(2), source))
    return DsnHosts(tuple(hosts), tuple(ports))


def _query_hosts(parameters: dict[str, list[str]], source: str) -> DsnHosts:
    """Hosts and ports given as ``?host=…&port=…`` (a URL with no host before the path)."""
    hosts = parameters.get("host", [""])[-1].split(",")
    port_list = parameters.get("port", [""])[-1]
    ports = [_port(p, source) for p in port_list.split(",")] if port_list else [None]
    if len(ports) == 1:
        ports *= len(hosts)
    elif len(ports) != len(hosts):
        raise _refuse(source, "has a different number of ports and hosts")
    return DsnHosts(tuple(hosts), tuple(ports))


def _shown_userinfo(userinfo: str) -> str:
    if any(c in userinfo for c in "/?#@[]"):
        return "***"  # mis-encoded: no telling where the user name ends
    user, colon, _ = userinfo.partition(":")
    return f"{user}:***" if colon else user


def _shown_host(entry: str) -> str:
    match = _HOST.fullmatch(entry)
    port = match.group(2) if match is not None else None
    # A "port" that is not a number may be a password written without '@host'; a host
    # with odd characters may be the tail of a query cut at an '@'.
    if match is None or (port and not port.isdigit()):
        return "***"
    return entry


def _shown_parameter(field: str) -> str:
    if not field:
        return field
    key, equals, _ = field.partition("=")
    if not equals or _QUERY_KEY.fullmatch(key) is None:
        return "***"  # not name=value: perhaps the tail of a value cut at an '&'
    if key.lower() in _SHOWN_PARAMETERS:
        return field
    return f"{key}=***"


def redact_dsn(dsn: str | None) -> str | None:
    """``dsn`` for logs and messages: every password, in any form, replaced by ``***``.

    Whatever is not certainly harmless is hidden: the user-info password, the values of
    query parameters other than well-known harmless ones, a mis-encoded user-info
    (everything between ``://`` and the last ``@``), and the whole text if it is no URL.
    """
    if not dsn:
        return dsn
    match = _SCHEME.match(dsn)
    if match is None:
        return "***"  # no structure to go by: any of it could be the password
    if match.group(1).lower() not in POSTGRES_SCHEMES:
        return match.group(0) + "***"  # a foreign URL: its layout is not ours to know
    rest = dsn[match.end() :]
    userinfo, at, after = rest.rpartition("@")
    shown = _shown_userinfo(userinfo) + "@" if at else ""
    before_fragment, hash_mark, _ = after.partition("#")
    location, question_mark, query = before_fragment.partition("?")
    hostlist, slash, path = location.partition("/")
    shown += ",".join(_shown_host(entry) for entry in hostlist.split(","))
    shown += slash + (path if _PATH.fullmatch(path) else "***")
    if question_mark:
        shown += "?" + "&".join(_shown_parameter(field) for field in query.split("&"))
    shown += "#***" if hash_mark else ""
    # Belt and braces: whatever the layout, no possible password survives.
    for secret in sorted(_secrets(dsn), key=len, reverse=True):
        shown = shown.replace(secret, "***")
    return match.group(0) + shown


def _secrets(dsn: str) -> set[str]:
    """Every text in ``dsn`` that may be a password, raw and decoded."""
    found: set[str] = set()
    match = _SCHEME.match(dsn)
    rest = dsn[match.end() :] if match else dsn
    userinfo, at, _ = rest.rpartition("@")
    if at:
        found.add(userinfo.partition(":")[2])
        if any(c in userinfo for c in "/?#@[]"):
            # Mis-encoded: a parser may have cut the password at any of these.
            found |= {userinfo, *re.split(r"[:/?#@\[\]]", userinfo)}
    for field in rest.split("&"):
        key, equals, value = field.partition("=")
        if equals and "password" in key.lower():
            found |= {value.partition("#")[0]}
    found |= {unquote(s) for s in found} | {unquote_plus(s) for s in found}
    return {s for s in found if len(s) >= _MIN_SECRET}


def hide_secrets(text: str, dsn: str | None) -> str:
    """``text`` with anything that may be ``dsn``'s password replaced by ``***``.

    The last line of defence for messages built from other libraries' exceptions, which
    may quote a URL: the whole ``dsn`` first, then each possible password.
    """
    if not dsn:
        return text
    text = text.replace(dsn, redact_dsn(dsn) or "")
    for secret in sorted(_secrets(dsn), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
