"""Noticing that Redis lost what was sent to it under live connections.

Two ways. Its data: FLUSHALL, eviction, a failover, a restart. Group memberships live in Redis; when they
vanish, the sockets still look connected but nothing reaches them any more. Or a stretch out of reach,
its data kept: the listener's pushes meanwhile went nowhere, and a listener that stopped before Redis came
back sends them no more, while sockets on the pub/sub layer (which reconnects by itself) stay open.

Each web process keeps a key of its own in Redis and touches it every EPOCH_CHECK_SECONDS: once the key
is gone, so are the memberships made before it; once a touch fails and a later one works, Redis was out
of reach in between. Either is a loss: the process's sockets then rejoin at once, and the process checks
them against the replica (freshness.py) for what they missed; between losses they only re-add themselves
now and then (cheap), and the process checks them every 15 s or so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import redis.asyncio

from client_site.web.loops import PerLoop
from reactive import settings

log = logging.getLogger("reactive.web")
EPOCH_CHECK_SECONDS = 5.0
KEY_TTL_SECONDS = 24 * 3600  # a process gone for good leaves its key behind this long at most
CHECK_TIMEOUT_SECONDS = 3.0


class RedisEpochs:
    """Per event loop: ``lost`` is set each time Redis is found to have lost its data or to have been out
    of reach, then replaced."""

    def __init__(self) -> None:
        self.key = f"{settings.prefix()}:alive:{uuid.uuid4().hex}"
        self.lost = asyncio.Event()
        self.losses = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._watch(), name="redis epochs")

    async def _watch(self) -> None:
        client = redis.asyncio.Redis.from_url(
            settings.redis_url(), socket_connect_timeout=2, socket_timeout=2
        )
        placed = out_of_reach = False
        while True:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                    data_lost = placed and not await client.expire(self.key, KEY_TTL_SECONDS)
                    if not placed or data_lost:
                        await client.set(self.key, "1", ex=KEY_TTL_SECONDS)
                if data_lost:
                    self._lost("Redis lost its data (this process's key is gone)", logging.WARNING)
                elif out_of_reach:
                    self._lost("Redis answers again", logging.INFO)
                placed, out_of_reach = True, False
            except Exception as exc:  # Redis down or stalled: the next round looks again (joins log outages)
                log.debug("redis epochs: %s: %s", type(exc).__name__, exc)
                out_of_reach = placed  # before the key is placed, no socket can have joined through it
            _still_wanted()
            await asyncio.sleep(EPOCH_CHECK_SECONDS)

    async def next_loss(self, timeout: float) -> None:
        """Return at the next loss (of Redis's data, or of its reach), or after ``timeout`` seconds.

        asyncio.timeout, not wait_for, which on Python 3.11 can swallow the cancel that stops a waiting
        loop (CPython gh-86296; see reactive/layers.py)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.lost.wait()

    def _lost(self, what: str, level: int) -> None:
        self.losses += 1
        log.log(level, "%s: the sockets rejoin their groups and catch up with the replica", what)
        lost, self.lost = self.lost, asyncio.Event()
        lost.set()


def _still_wanted() -> None:
    """Stop if this task was cancelled: redis-py can swallow a cancellation that lands inside a command
    (seen at event loop shutdown), and this loop would then run on, holding the loop's close forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


_epochs = PerLoop(RedisEpochs)


def redis_epochs() -> RedisEpochs:
    """The running loop's watch, started on first use."""
    watch = _epochs()
    watch.start()
    return watch
