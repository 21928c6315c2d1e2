"""One exception tree. Third-party errors (botocore, redis, database) are translated at the boundary."""

from __future__ import annotations

import logging


class ReactiveError(Exception):
    """Base of every error reactive raises on purpose; ``exit_code`` follows DESIGN.md."""

    exit_code = 1


class ConfigError(ReactiveError):
    """Configuration that cannot work (a missing or malformed variable)."""


class UsageError(ReactiveError):
    exit_code = 2


class ServiceUnavailable(ReactiveError):
    """A service (AWS endpoint, Redis, database) cannot be reached."""

    exit_code = 3


class TransportError(ReactiveError):
    """The AWS side answered with an error: its code ("Throttling") and HTTP status (400) when it said them."""

    def __init__(self, message: str, code: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    @property
    def refused_request(self) -> bool:
        """AWS refused the request as such (a 4xx other than throttling): sending it again will not help."""
        return self.status is not None and 400 <= self.status < 500 and "Throttl" not in self.code


class CredentialsError(TransportError):
    """AWS refused or could not find the credentials."""


class ResourceNotFound(TransportError):
    """A topic or queue does not exist (not provisioned yet?)."""


class MessageError(ReactiveError):
    """A message that cannot be decoded; it is left for the DLQ."""


class ApplyError(ReactiveError):
    """A decoded event that cannot be applied to the replica now (it will be retried)."""


# SQLSTATEs of a schema that lacks what the code expects: undefined table, undefined column (PostgreSQL).
MISSING_SCHEMA_SQLSTATES = frozenset({"42P01", "42703"})


def is_missing_schema(exc: BaseException) -> bool:
    """A database error that says the schema is not (fully) migrated, as opposed to an outage.

    PostgreSQL says so by SQLSTATE on the driver's error (any locale); SQLite only in its message.
    """
    from django.db import DatabaseError

    if not isinstance(exc, DatabaseError):
        return False
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if sqlstate is not None:
        return sqlstate in MISSING_SCHEMA_SQLSTATES
    return str(exc).startswith(("no such table", "no such column"))


def describe(exc: BaseException) -> str:
    """An exception in one line: its type and message (a bare TimeoutError says what it means)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "TimeoutError: no answer in time"
    return f"{type(exc).__name__}: {exc}"


def retry_delay(failures: int) -> float:
    """Seconds before the next try after ``failures`` in a row: 1, 2, 4, ... then 30 s for good (the
    exponent stops growing too: 2**1024 is an OverflowError)."""
    return min(30.0, 0.5 * 2 ** min(failures, 6))


class FailureStreak:
    """Logs a periodic job's failures once per streak: the first one, then the recovery.

    One instance may serve many jobs (every user socket of a process): Redis going away is then one
    warning, not one per socket per round.
    """

    def __init__(self, what: str, log: logging.Logger) -> None:
        self.what = what
        self.log = log
        self.failing = False

    def failed(self, exc: BaseException) -> None:
        if not self.failing:
            self.failing = True
            self.log.warning("%s failed: %s; retrying, silently until it works", self.what, describe(exc))

    def succeeded(self) -> None:
        if self.failing:
            self.failing = False
            self.log.info("%s works again", self.what)
