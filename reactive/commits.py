"""Whether what a transaction wrote or read still stands: committed, still open, or rolled back.

Capture keeps, on each instance, a snapshot of what is stored. A snapshot taken inside a transaction
holds only if that transaction commits: after a rollback the row holds what it held before, and a save
of the same instance diffed against the rolled-back snapshot would find nothing to publish. Django has
no rollback hook, but it runs on_commit callbacks on commit and drops those of a transaction (or a
savepoint) that rolls back. A Token is such a callback, registered once per transaction and savepoint
level: committed once it has run, open while it is still waiting in the connection's list, rolled back
otherwise.

When in doubt a token counts as rolled back (while the commit's callbacks run, those not yet run look
dropped): capture then publishes more than it needs to, never less.
"""

from __future__ import annotations

from typing import Any

from django.db import connections

_ATTR = "_reactive_commit_token"  # the connection's current token (connections are per thread)


class Token:
    __slots__ = ("committed", "connection", "index", "savepoints")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.index = len(connection.run_on_commit)  # Django never drops a callback before a surviving one
        self.savepoints = list(connection.savepoint_ids)
        self.committed = False

    def __call__(self) -> None:  # Django calls it when the transaction commits
        self.committed = True

    def open(self) -> bool:
        hooks = self.connection.run_on_commit
        return not self.committed and self.index < len(hooks) and hooks[self.index][1] is self

    def rolled_back(self) -> bool:
        return not self.committed and not self.open()


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
