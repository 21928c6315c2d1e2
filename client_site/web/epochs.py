"""Noticing that Redis lost its data under live connections: FLUSHALL, eviction, a failover, a restart.

Group memberships live in Redis. When they vanish, the sockets still look connected but nothing reaches
them any more. Each web process keeps a key of its own in Redis and touches it every
EPOCH_CHECK_SECONDS: once the key is gone, so are the memberships made before it. The process's sockets
then rejoin at once and send again what they may have missed; between losses they only re-add
themselves now and then (cheap), and read nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref

import redis.asyncio

from reactive import settings

log = logging.getLogger("reactive.web")
EPOCH_CHECK_SECONDS = 5.0
KEY_TTL_SECONDS = 24 * 3600  # a process gone for good leaves its key behind this long at most
CHECK_TIMEOUT_SECONDS = 3.0


class RedisEpochs:
    """Per event loop: ``lost`` is set each time Redis is found to have lost its data, then replaced."""

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
        placed = False
        while True:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                    if placed and not await client.expire(self.key, KEY_TTL_SECONDS):
                        self._lost()
                        placed = False
                    if not placed:
                        await client.set(self.key, "1", ex=KEY_TTL_SECONDS)
                        placed = True
            except Exception as exc:  # Redis down or stalled: the next round looks again (joins log outages)
                log.debug("redis epochs: %s: %s", type(exc).__name__, exc)
            _still_wanted()
            await asyncio.sleep(EPOCH_CHECK_SECONDS)

    async def next_loss(self, timeout: float) -> None:
        """Return when Redis is next found to have lost its data, or after ``timeout`` seconds.

        asyncio.timeout, not wait_for, which on Python 3.11 can swallow the cancel that stops a waiting
        loop (CPython gh-86296; see reactive/layers.py)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.lost.wait()

    def _lost(self) -> None:
        self.losses += 1
        log.warning("Redis lost its data (this process's key is gone): the sockets rejoin their groups")
        lost, self.lost = self.lost, asyncio.Event()
        lost.set()


def _still_wanted() -> None:
    """Stop if this task was cancelled: redis-py can swallow a cancellation that lands inside a command
    (seen at event loop shutdown), and this loop would then run on, holding the loop's close forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


_epochs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RedisEpochs] = weakref.WeakKeyDictionary()


def redis_epochs() -> RedisEpochs:
    """The running loop's watch, started on first use."""
    loop = asyncio.get_running_loop()
    if loop not in _epochs:
        _epochs[loop] = RedisEpochs()
    watch = _epochs[loop]
    watch.start()
    return watch
