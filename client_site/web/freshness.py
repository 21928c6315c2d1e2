"""No page stays stale: every open user socket is checked against the replica now and then.

A push can be lost after the replica committed: a listener killed between its commit and its send, a
Redis unreachable from the listener alone (a partition: the web process saw nothing wrong), a channel
over capacity. Each web process therefore asks the database, every CHECK_SECONDS, which (key, version)
each of its sockets' users is at now: one query for up to CHUNK users, whatever the number of sockets.
A socket whose last profile sent says otherwise reads its profile and sends it (or ends, for an account
gone meanwhile); the others read nothing. Losses Redis itself reports (epochs.py) are sent at once; this
bounds the rest to CHECK_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from typing import Any, Protocol

from channels.db import database_sync_to_async

from reactive.errors import FailureStreak
from reactive.events import USER_MODEL
from reactive.replica import LEGACY_PREFIX, ReplicaState

log = logging.getLogger("reactive.web")
CHECK_SECONDS = 15.0
CHECK_JITTER = 0.2  # processes started together do not query together
CHUNK = 500  # users a query asks about: well under every database's limit on parameters
NOT_A_REPLICA = ("", 0)  # what a local account's profile carries


class Shown(Protocol):
    """What the check needs of a socket."""

    def shown(self) -> tuple[str, int]:
        """(key, version) of the last profile the socket was sent."""

    async def recheck(self) -> None:
        """Read the profile and send it if it changed; never raises."""


def current_versions(local_pks: list[str]) -> dict[str, tuple[str, int]]:
    """(key, version) of each of these local users that replicates a master user (keys as profiles carry
    them: a legacy replica's without its prefix)."""
    versions: dict[str, tuple[str, int]] = {}
    for start in range(0, len(local_pks), CHUNK):
        rows = ReplicaState.objects.filter(
            model=USER_MODEL, deleted=False, local_pk__in=local_pks[start : start + CHUNK]
        ).values_list("local_pk", "key", "version")
        versions.update((pk, (key.removeprefix(LEGACY_PREFIX), int(version))) for pk, key, version in rows)
    return versions


class Freshness:
    """One event loop's open user sockets, by local user, and the task that checks them."""

    def __init__(self) -> None:
        self.sockets: dict[str, set[Shown]] = {}
        self.task: asyncio.Task[None] | None = None
        self.rechecks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self.failures = FailureStreak("user sockets: checking their profiles against the replica", log)

    def add(self, local_pk: Any, socket: Shown) -> None:
        self.sockets.setdefault(str(local_pk), set()).add(socket)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="user sockets freshness")

    def discard(self, local_pk: Any, socket: Shown) -> None:
        sockets = self.sockets.get(str(local_pk))
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self.sockets[str(local_pk)]
        if not self.sockets and self.task is not None:  # nothing left to check: no task outlives the sockets
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        while self.sockets:
            await asyncio.sleep(CHECK_SECONDS * random.uniform(1 - CHECK_JITTER, 1 + CHECK_JITTER))
            await self.check()

    async def check(self) -> int:
        """One round: returns how many sockets were found behind the replica (each then rechecks)."""
        if not self.sockets:
            return 0
        try:
            current = await database_sync_to_async(current_versions)(list(self.sockets))
        except Exception as exc:  # the database down: the next round asks again
            self.failures.failed(exc)
            return 0
        self.failures.succeeded()
        behind = 0
        for local_pk, sockets in list(self.sockets.items()):
            for socket in list(sockets):
                if socket.shown() != current.get(local_pk, NOT_A_REPLICA):
                    behind += 1
                    task = asyncio.get_running_loop().create_task(socket.recheck())
                    self.rechecks.add(task)
                    task.add_done_callback(self.rechecks.discard)
        return behind


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Freshness] = weakref.WeakKeyDictionary()


def freshness() -> Freshness:
    """The running loop's open user sockets."""
    loop = asyncio.get_running_loop()
    if loop not in _per_loop:
        _per_loop[loop] = Freshness()
    return _per_loop[loop]
