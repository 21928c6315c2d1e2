"""The Channels layers a client site runs on: channels-redis's two, with a receive that a cancel always ends.

Channels cancels a consumer's pending ``receive`` when its websocket closes, and waits for it to end.
redis-py sends every command through ``asyncio.wait_for`` (the layers set a socket timeout), and on
Python 3.11 ``wait_for`` returns the result instead of raising when the cancel comes just as the send
completes (CPython gh-86296, fixed in 3.12). The layer's receive then goes on waiting for a message
that never comes: the closed socket's task lives for ever, and uvicorn, which waits for it, never exits
on SIGTERM. Here the layer's receive runs in a task of its own, which is cancelled until it has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from channels_redis.core import RedisChannelLayer as _RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer as _RedisPubSubChannelLayer

T = TypeVar("T")

RECANCEL_SECONDS = 0.1  # how long a cancelled receive has to end before it is cancelled again


async def cancel_until_ended(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` again and again until it has ended (however it ends: its outcome is dropped)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    if not task.cancelled():
        task.exception()  # retrieved, so that asyncio does not log it as never retrieved


async def ending_on_cancel(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` in a task of its own; when cancelled, end that task before raising."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await cancel_until_ended(task)
        raise


class RedisChannelLayer(_RedisChannelLayer):
    """channels-redis's list-based layer (the default, REACTIVE_CHANNEL_LAYER=redis)."""

    async def receive(self, channel: str) -> dict[str, Any]:
        return await ending_on_cancel(super().receive(channel))


class RedisPubSubChannelLayer(_RedisPubSubChannelLayer):
    """channels-redis's pub/sub layer (REACTIVE_CHANNEL_LAYER=pubsub): it hands every call to the layer of
    the running loop, whose receive also waits on Redis (a subscribe) before its queue."""

    async def receive(self, channel: str) -> dict[str, Any]:
        return await ending_on_cancel(self._get_layer().receive(channel))
