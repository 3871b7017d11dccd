"""The user scope: running a transaction as a Supabase ``authenticated`` user, under
row-level security."""

from __future__ import annotations

from ..errors import PermissionDeniedError, SessionStoreError, translate_errors
from .connection import Connection

__all__ = ["SET_USER_SCOPE", "enter_user_scope"]


# Transaction-local (is_local = true): the settings end with the transaction, so nothing
# reaches the next user of the connection, even behind a transaction pooler.
SET_USER_SCOPE = """
SELECT set_config('request.jwt.claims', $1, true), set_config('role', 'authenticated', true)
"""
# No such role (22023), or the role is not granted to the connecting login (42501).
_SCOPE_REFUSED = ("22023", "42501")


async def enter_user_scope(conn: Connection, claims: str) -> None:
    """Make the rest of ``conn``'s open transaction run as the user the JWT ``claims`` (a
    JSON object) name. ``PermissionDeniedError`` if the connecting role may not become
    ``authenticated``."""
    try:
        with translate_errors():
            await conn.execute(SET_USER_SCOPE, claims)
    except SessionStoreError as exc:
        if exc.sqlstate not in _SCOPE_REFUSED:
            raise
        raise PermissionDeniedError(
            "as_user needs the role 'authenticated' granted to the connecting "
            f"role (Supabase sets this up; see docs/supabase.md): {exc}",
            sqlstate=exc.sqlstate,
        ) from exc
