"""Retrying a storage operation when its database connection drops.

A PostgreSQL server drops connections when it restarts or fails over, when a proxy times out
an idle link, or when an administrator runs `pg_terminate_backend`. `pool_pre_ping` replaces
connections that died while idle in the pool, but one that drops in the middle of a
transaction fails that transaction: SQLAlchemy raises an `OperationalError` marked
`connection_invalidated`, or, when the caller (Optuna does this while reading trials) catches
it and queries the same session again, a `PendingRollbackError`. Either way the transaction
was rolled back and a fresh session on a new connection works, so the whole operation is run
again: a few times, with exponential backoff, and only for a lost connection (a constraint
violation or a malformed query fails at once, as before).

Once a connection was lost, a failure to open a new one (the server is still restarting)
counts as the same outage and is retried within the same bounded budget.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, PendingRollbackError

log = logging.getLogger("tale_opt.storage")

T = TypeVar("T")

# Nested retried operations (Optuna's public storage methods call its private ones) retry once,
# at the outermost level, instead of multiplying their attempts. Per thread: the heartbeat
# thread and the main thread each have their own session and their own outage.
_active = threading.local()


def connection_lost(err: BaseException | None) -> bool:
    """Whether `err` (or an exception it was raised from) says the connection dropped."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, PendingRollbackError | DisconnectionError):
            return True
        if isinstance(err, DBAPIError) and err.connection_invalidated:
            return True
        err = err.__cause__ or err.__context__
    return False


def _cannot_connect(err: BaseException | None) -> bool:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OperationalError):
            return True
        err = err.__cause__ or err.__context__
    return False


@dataclass(frozen=True)
class Reconnect:
    """How often and how patiently to retry an operation over a lost connection.

    The waits are `first_delay`, twice that, four times ... capped at `max_delay`; with the
    defaults, 0.5 + 1 + 2 + 4 = 7.5 s in all before the error is raised.

    Attributes:
        attempts: Runs of the operation in all (1 = no retry).
        first_delay: Seconds before the first retry.
        max_delay: Longest wait between two attempts.
    """

    attempts: int = 5
    first_delay: float = 0.5
    max_delay: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"`attempts >= 1` must hold, but got attempts={self.attempts}")
        if not 0 <= self.first_delay <= self.max_delay:
            raise ValueError(
                "`0 <= first_delay <= max_delay` must hold, but got "
                f"(first_delay={self.first_delay}, max_delay={self.max_delay})"
            )

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        return min(self.max_delay, self.first_delay * 2 ** (retry - 1))

    def call(self, operation: Callable[[], T], reset: Callable[[], None], what: str) -> T:
        """Run `operation`; after a lost connection, `reset()` (drop the session) and retry.

        Raises:
            Exception: The operation's error when it is not a lost connection, or the last
                one once every attempt has failed.
        """
        if getattr(_active, "retrying", False):
            return operation()
        _active.retrying = True
        try:
            return self._retry(operation, reset, what)
        finally:
            _active.retrying = False

    def _retry(self, operation: Callable[[], T], reset: Callable[[], None], what: str) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return operation()
            except Exception as err:
                outage = connection_lost(err) or (attempt > 1 and _cannot_connect(err))
                if not outage or attempt == self.attempts:
                    raise
                wait = self.delay(attempt)
                reason = " ".join(str(getattr(err, "orig", None) or err).split())[:200]
                log.warning(
                    "lost the connection to the trial storage in %s (%s); reconnecting in "
                    "%.1f s (attempt %d of %d)",
                    what, reason, wait, attempt + 1, self.attempts,
                )  # fmt: skip
                reset()
                time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")
