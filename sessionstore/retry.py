"""The one backoff policy: jittered exponential delays, through tenacity; and
:func:`describe`, the one way an error is named in a log line.

Used by the pool's retry of reads, the write-behind writer and the cache's listener.
Building a tenacity loop costs about 40 µs, a tenth of a loopback round trip, so the
pool does not enter one until a first attempt has failed (see ``Database.run``).

Each retry is logged at DEBUG only: an outage is one condition, and the code that owns
it (the writer, the listener, the pool) says so once at WARNING and once more when it is
over, instead of a line per attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_random_exponential,
)

__all__ = ["LISTENER", "READS", "WRITER", "Backoff", "describe", "retrying"]

logger = logging.getLogger("sessionstore")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays drawn uniformly from ``[0, min(cap, first * 2**(n - 1))]`` after the n-th
    failure; ``attempts`` in all (``None``: until success or a non-retryable error)."""

    first: float
    cap: float
    attempts: int | None


#: Idempotent reads on the pool: two more tries after a lost connection or a restart.
READS = Backoff(first=0.05, cap=1.0, attempts=3)
#: The write-behind writer: until the batch lands (``write_deadline`` bounds the waiting).
WRITER = Backoff(first=0.05, cap=2.0, attempts=None)
#: The cache's LISTEN connection: reconnect for as long as the store is open.
LISTENER = Backoff(first=0.1, cap=5.0, attempts=None)


def describe(error: BaseException, *, message: bool = True) -> str:
    """``error`` named for a log line or a report: its class, its SQLSTATE if it has one
    and, with ``message``, its text — never an empty reason (``TimeoutError()`` and many
    socket errors have no text; the class name then says what happened).

    ``message=False`` is for errors whose text may quote data: a driver or programming
    error's message can contain the values of the statement that failed.
    """
    name = type(error).__name__
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        name = f"{name} (SQLSTATE {sqlstate})"
    text = str(error).strip() if message else ""
    return f"{name}: {text}" if text else name


def retrying(
    policy: Backoff,
    *,
    retry_on: Callable[[BaseException], bool],
    what: str,
    on_retry: Callable[[RetryCallState], None] | None = None,
    quote: Callable[[BaseException], bool] = lambda _error: True,
) -> AsyncRetrying:
    """An ``async for`` retry loop following ``policy``.

    Exceptions for which ``retry_on`` is false end the loop at once and are re-raised as
    they are, as is the last one when the attempts run out. Each retry is logged at
    DEBUG as ``what`` with the error (its text only where ``quote`` allows it, see
    :func:`describe`), the attempt number and the delay; then ``on_retry`` is called.
    """

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        if logger.isEnabledFor(logging.DEBUG) and error is not None:
            logger.debug(
                "%s failed (%s), retry %d in %.2fs",
                what,
                describe(error, message=quote(error)),
                state.attempt_number,
                delay,
            )
        if on_retry is not None:
            on_retry(state)

    return AsyncRetrying(
        stop=stop_never if policy.attempts is None else stop_after_attempt(policy.attempts),
        wait=wait_random_exponential(multiplier=policy.first, max=policy.cap),
        retry=retry_if_exception(retry_on),
        before_sleep=before_sleep,
        reraise=True,
    )
