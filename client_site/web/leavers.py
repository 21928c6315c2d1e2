"""Channels to take out of their groups once Redis answers again: one worker per event loop.

A socket that closed while Redis was away (its receive failed, or its leave did) is still a member of its
user's group, and would stay one until group_expiry (a day), sent every change of the user; each reconnect
of the page adds another. Thousands of sockets close together when Redis goes: a task of their own each
would retry together and fill the layer's connection pool just as Redis comes back. So they wait here, and
one worker takes them out one at a time, pausing (with jitter) while Redis does not answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import redis

from client_site.web.broadcast import JOIN_TIMEOUT_SECONDS
from client_site.web.loops import PerLoop
from reactive.errors import describe

log = logging.getLogger("reactive.web")
PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0)  # while Redis does not answer; then every last one
MAX_WAITING = 100_000  # beyond, the oldest are left to group_expiry
REDIS_AWAY: tuple[type[BaseException], ...] = (redis.RedisError, OSError)  # OSError: TimeoutError too


class Leavers:
    def __init__(self) -> None:
        self.waiting: dict[tuple[str, str], Any] = {}  # (group, channel) -> the layer, oldest first
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0

    def add(self, layer: Any, group: str, channel: str) -> None:
        if len(self.waiting) >= MAX_WAITING:
            del self.waiting[next(iter(self.waiting))]
            if not self.dropped:
                log.warning(
                    "more than %d channels wait to leave their groups: the oldest are left to group_expiry",
                    MAX_WAITING,
                )
            self.dropped += 1
        self.waiting[(group, channel)] = layer
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drain(), name="leaving groups")

    async def _drain(self) -> None:
        failures = 0
        while self.waiting:
            (group, channel), layer = next(iter(self.waiting.items()))
            try:
                async with asyncio.timeout(JOIN_TIMEOUT_SECONDS):
                    await layer.group_discard(group, channel)
            except REDIS_AWAY as exc:  # the outage is reported where it is felt (sockets, memberships)
                log.debug("leaving groups: %s; %d channels wait", describe(exc), len(self.waiting))
                await asyncio.sleep(PAUSES[min(failures, len(PAUSES) - 1)] * random.uniform(0.8, 1.2))
                failures += 1
                continue
            except Exception as exc:  # not Redis being away: trying again would block every other leaver
                log.warning("%s could not leave %s: %s", channel, group, describe(exc))
            failures = 0
            self.waiting.pop((group, channel), None)


# The running loop's channels waiting to leave their groups.
leavers = PerLoop(Leavers)
