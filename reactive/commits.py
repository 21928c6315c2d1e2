"""Whether what a transaction wrote or read still stands: committed, still open, rolled back, or unknown.

Capture keeps, on each instance, a snapshot of what is stored. A snapshot taken inside a transaction
holds only if that transaction commits: after a rollback the row holds what it held before, and a save
of the same instance diffed against the rolled-back snapshot would find nothing to publish. Django has
no rollback hook, but it runs on_commit callbacks on commit and drops those of a transaction (or a
savepoint) that rolls back. A Token is such a callback, registered once per transaction and savepoint
level:

- committed: it has run;
- open: it still waits in the connection's list, at the place it was put (Django only ever drops a
  callback together with every later one of the same savepoint, so a waiting one never moves);
- rolled back: the list it was put in was set aside untouched (a rollback replaces the connection's list);
- unknown: anything else. A commit runs the callbacks in order and stops at the first one that raises,
  so one after it never runs although its transaction committed; and while they run, those not yet run
  look the same. Capture then counts every field as changed: it publishes more than it needs to, never
  less.

Tokens do not survive a copy or a pickle of an instance as anything but "committed" or "unknown".
"""

from __future__ import annotations

from typing import Any

from django.db import connections

_ATTR = "_reactive_commit_token"  # the connection's current token (connections are per thread)


class Token:
    __slots__ = ("committed", "connection", "hooks", "index", "savepoints")

    def __init__(self, connection: Any) -> None:
        self.connection: Any = connection
        self.hooks: list[Any] | None = connection.run_on_commit  # the list it is put in
        self.index = len(self.hooks)
        self.savepoints = list(connection.savepoint_ids)
        self.committed = False

    def __call__(self) -> None:  # Django calls it when the transaction commits
        self.committed = True
        self.hooks = None  # nothing left to tell: let the transaction's callbacks go

    def open(self) -> bool:
        if self.committed or self.connection is None:
            return False
        hooks = self.connection.run_on_commit
        if self.index < len(hooks) and hooks[self.index][1] is self:
            self.hooks = hooks  # a savepoint's rollback copies the list: follow it
            return True
        return False

    def rolled_back(self) -> bool:
        hooks = self.hooks
        if self.committed or hooks is None or self.open():
            return False
        return self.index < len(hooks) and hooks[self.index][1] is self  # set aside, never run

    # A copy of an instance (setUpTestData deep-copies them) was read in the same transaction: same token.
    def __copy__(self) -> Token:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Token:
        return self

    def __getstate__(
        self,
    ) -> dict[str, Any]:  # connections and callbacks do not pickle, nor would they mean anything
        return {"committed": self.committed, "index": self.index, "savepoints": self.savepoints}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.connection, self.hooks = None, None
        self.committed, self.index, self.savepoints = state["committed"], state["index"], state["savepoints"]


def current(using: str) -> Token | None:
    """The token of the transaction (and savepoint level) open on ``using``; None in autocommit."""
    if using not in connections.settings:
        return None  # an alias this process has no connection to holds no transaction of its own
    connection = connections[using]
    if not connection.in_atomic_block:
        return None
    token: Token | None = getattr(connection, _ATTR, None)
    if token is not None and token.savepoints == connection.savepoint_ids and token.open():
        return token
    token = Token(connection)
    connection.on_commit(token)
    setattr(connection, _ATTR, token)
    return token
