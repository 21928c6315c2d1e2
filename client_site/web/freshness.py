"""No page stays stale: every open user socket is checked against the replica now and then.

A push can be lost after the replica committed: a listener killed between its commit and its send, a
Redis unreachable from the listener alone (a partition: the web process saw nothing wrong), a channel
over capacity, Redis losing its data or going out of reach. Each web process therefore asks the database,
every CHECK_SECONDS and soon after each loss that Redis reports (epochs.py), which (key, version) each of
its sockets' users is at now: one query for up to 500 users (profiles.CHUNK), whatever the number of
sockets. Only for the sockets whose last profile says otherwise are the profiles read, two queries a
chunk, and each such socket sends its own (or ends, for an account removed meanwhile).

Between checks, every HEARTBEAT_SECONDS, each socket is sent a small heartbeat frame: a page sends
nothing, so without frames a connection dropped on the way (a laptop asleep, a NAT forgetting it) looks
open to the browser for as long as its TCP keepalive takes, forever in some; the page's watchdog reconnects
once heartbeats stop (socket.js), whatever the database or Redis are doing.

The same round asks whether each user's account still is (one more query per 500 users): an account
disabled or deleted on this site alone (its admin, a local account, or a replica changed here) has no
version to compare and no push, and its socket must end as one ended on the master does.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Protocol

from channels.db import database_sync_to_async

from client_site.web.epochs import redis_epochs
from client_site.web.loops import PerLoop
from client_site.web.profiles import ended_accounts, profiles_by_pk, replica_versions
from reactive.errors import FailureStreak

log = logging.getLogger("reactive.web")
CHECK_SECONDS = 15.0
CHECK_JITTER = 0.2  # processes started together do not query together
# After a loss the sockets rejoin their groups, spread over consumers.LOSS_SPREAD_SECONDS; the check comes
# after, so that a change it misses is pushed to a socket that is in its group again.
AFTER_LOSS_SECONDS = 2.5
NOT_A_REPLICA = ("", 0)  # what a local account's profile carries
# The user page reconnects after three heartbeats missed (user.js, restartAfterMs): keep the two in step.
HEARTBEAT_SECONDS = 20.0
HEARTBEAT_CHUNK = 500


class Shown(Protocol):
    """What the check needs of a socket."""

    pushes: int  # changes the socket received from its group so far

    def shown(self) -> tuple[str, int]:
        """(key, version) of the last profile the socket was sent."""

    async def catch_up(self, profile: dict[str, Any] | None, pushes_then: int) -> None:
        """Send ``profile`` (None: the user is gone), read after the socket had ``pushes_then`` pushes,
        unless a push came since or it is what the socket last sent. Never raises."""

    async def heartbeat(self) -> None:
        """Send the page a heartbeat frame. Never raises."""


class Freshness:
    """One event loop's open user sockets, by local user, and the task that checks them."""

    def __init__(self) -> None:
        self.sockets: dict[str, set[Shown]] = {}
        self.task: asyncio.Task[None] | None = None
        self.heartbeats: asyncio.Task[None] | None = None
        self.catching_up: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self.failures = FailureStreak("user sockets: checking their profiles against the replica", log)
        self.restart: asyncio.TimerHandle | None = None

    def add(self, local_pk: str, socket: Shown) -> None:
        self.sockets.setdefault(local_pk, set()).add(socket)
        self._start()

    def _start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="user sockets freshness")
            self.task.add_done_callback(self._ended)
        if self.heartbeats is None or self.heartbeats.done():
            self.heartbeats = asyncio.get_running_loop().create_task(
                self._beat(), name="user sockets heartbeat"
            )

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A check loop that raised (a bug: its queries' failures are caught) says so and starts again a
        round later (not at once: a loop that fails at its start would spin)."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("user sockets: the freshness check stopped; starting again", exc_info=task.exception())
        self.restart = asyncio.get_running_loop().call_later(CHECK_SECONDS, self._restart_if_wanted)

    def _restart_if_wanted(self) -> None:
        self.restart = None
        if self.sockets:
            self._start()

    def discard(self, local_pk: str, socket: Shown) -> None:
        sockets = self.sockets.get(local_pk)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self.sockets[local_pk]
        if not self.sockets:  # nothing left to check: no task outlives the sockets
            if self.task is not None:
                self.task.cancel()
                self.task = None
            if self.heartbeats is not None:
                self.heartbeats.cancel()
                self.heartbeats = None
            if self.restart is not None:
                self.restart.cancel()
                self.restart = None

    async def _run(self) -> None:
        epochs = redis_epochs()
        seen = epochs.losses
        while self.sockets:
            if epochs.losses == seen:  # a loss during the last check is not waited past
                await epochs.next_loss(CHECK_SECONDS * random.uniform(1 - CHECK_JITTER, 1 + CHECK_JITTER))
            if epochs.losses != seen:
                seen = epochs.losses
                await asyncio.sleep(AFTER_LOSS_SECONDS)
            await self.check()

    async def _beat(self) -> None:
        """A heartbeat to every socket, every HEARTBEAT_SECONDS (a socket's own send never raises)."""
        while self.sockets:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            every = [socket for sockets in list(self.sockets.values()) for socket in list(sockets)]
            # A chunk at a time, its sends side by side: a socket that stopped reading holds its chunk up
            # to its own send timeout, not the whole pass one timeout per such socket.
            for start in range(0, len(every), HEARTBEAT_CHUNK):
                await asyncio.gather(
                    *(socket.heartbeat() for socket in every[start : start + HEARTBEAT_CHUNK])
                )

    async def check(self) -> int:
        """One round: returns how many sockets were found behind the replica (each then catches up)."""
        asked = list(self.sockets)  # sockets opened during the queries wait for the next round
        if not asked:
            return 0
        try:
            current, ended = await database_sync_to_async(_state_of)(asked)
            behind = self._behind(asked, current, ended)
            users = sorted({local_pk for local_pk, _, _ in behind})
            profiles = await database_sync_to_async(profiles_by_pk)(users) if users else {}
        except Exception as exc:  # the database down: the next round asks again
            self.failures.failed(exc)
            return 0
        self.failures.succeeded()
        for local_pk, socket, pushes_then in behind:
            task = asyncio.get_running_loop().create_task(
                socket.catch_up(profiles.get(local_pk), pushes_then)
            )
            self.catching_up.add(task)
            task.add_done_callback(self.catching_up.discard)
        return len(behind)

    def _behind(
        self, asked: list[str], current: dict[str, tuple[str, int]], ended: set[str]
    ) -> list[tuple[str, Shown, int]]:
        """(user, socket, its pushes so far) for each socket whose last profile is not the replica's now,
        or whose account ended. The pushes are counted before the profiles are read: one that comes during
        the read is newer."""
        found = []
        for local_pk in asked:
            for socket in list(self.sockets.get(local_pk, ())):
                if local_pk in ended or socket.shown() != current.get(local_pk, NOT_A_REPLICA):
                    found.append((local_pk, socket, socket.pushes))
        return found


def _state_of(local_pks: list[str]) -> tuple[dict[str, tuple[str, int]], set[str]]:
    """(key, version) of each user that replicates a master user, and the users whose account ended."""
    return replica_versions(local_pks), set(ended_accounts(local_pks))


# The running loop's open user sockets.
freshness = PerLoop(Freshness)
