"""Whether what a transaction wrote or read can be trusted yet: committed, still open, or neither.

Capture keeps, on each instance, a snapshot of what is stored. A snapshot taken inside a transaction
holds only if that transaction commits: after a rollback the row holds what it held before, and a save
of the same instance diffed against a rolled-back snapshot could find nothing to publish. Django has no
rollback hook, but it runs on_commit callbacks on commit and drops those of a transaction (or of an
atomic block's savepoint) that rolls back. A Token is such a callback, registered once per transaction
and savepoint level:

- committed: it has run;
- open: it still waits in the connection's list, at the place it was put (Django only ever drops a
  callback together with every later one of the same savepoint, so a waiting one never moves);
- neither: rolled back, or committed with an earlier on_commit callback raising (Django then runs no
  later one), or a copy made in another process. Nothing tells these apart, so capture counts every
  field as changed: it publishes more than it needs to, never less.

Savepoints made by hand (``transaction.savepoint()``) are not atomic blocks: Django keeps the callbacks
registered after one that is rolled back, so what a save did there is taken as written.
"""

from __future__ import annotations

from typing import Any

from django.db import connections

_ATTR = "_reactive_commit_token"  # the connection's current token (connections are per thread)


class Token:
    __slots__ = ("committed", "connection", "index", "savepoints")

    def __init__(self, connection: Any) -> None:
        self.connection: Any = connection
        self.index = len(connection.run_on_commit)
        self.savepoints = _savepoints(connection)
        self.committed = False

    def __call__(self) -> None:  # Django calls it when the transaction commits
        self.committed = True
        self.connection = None

    def open(self) -> bool:
        if self.connection is None:
            return False
        hooks = self.connection.run_on_commit
        return self.index < len(hooks) and hooks[self.index][1] is self

    # A copy of an instance (setUpTestData deep-copies them) was read in the same transaction: same token.
    def __copy__(self) -> Token:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Token:
        return self

    def __getstate__(self) -> dict[str, Any]:  # a connection does not pickle, nor would it mean anything
        return {"committed": self.committed, "index": self.index, "savepoints": self.savepoints}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.connection = None
        self.committed, self.index, self.savepoints = state["committed"], state["index"], state["savepoints"]


def _savepoints(connection: Any) -> list[str]:
    # An atomic block without a savepoint (save() runs in one) shares the fate of the block around it.
    return [sid for sid in connection.savepoint_ids if sid is not None]


def current(using: str) -> Token | None:
    """The token of the transaction (and savepoint level) open on ``using``; None in autocommit."""
    if using not in connections.settings:
        return None  # an alias this process has no connection to holds no transaction of its own
    connection = connections[using]
    if not connection.in_atomic_block:
        return None
    token: Token | None = getattr(connection, _ATTR, None)
    if token is not None and token.savepoints == _savepoints(connection) and token.open():
        return token
    token = Token(connection)
    connection.on_commit(token)
    setattr(connection, _ATTR, token)
    return token
