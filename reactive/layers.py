"""The Channels layers a client site runs on: channels-redis's two, whose calls a cancel always ends.

Channels cancels a consumer's pending ``receive`` when its websocket closes, and waits for it to end.
redis-py sends every command through ``asyncio.wait_for`` (the layers set a socket timeout), and on
Python 3.11 ``wait_for`` returns the result instead of raising when the cancel comes just as the send
completes (CPython gh-86296, fixed in 3.12). The layer's receive then goes on waiting for a message
that never comes: the closed socket's task lives for ever, and uvicorn, which waits for it, never exits
on SIGTERM. Here each layer call that waits on Redis runs in a task of its own, which is cancelled until
it has ended; then the caller's cancel raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from channels_redis.core import RedisChannelLayer as _RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer as _RedisPubSubChannelLayer

T = TypeVar("T")

RECANCEL_SECONDS = 0.1  # how long a cancelled call has to end before it is cancelled again


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


class _EndsOnCancel:
    """The layer calls that wait on Redis, each in a task of its own: a cancel always raises in the caller.

    Besides a receive that would wait for ever, a swallowed cancel would let a group_add return as if
    nothing had happened, and a loop that only a cancel stops (a membership refresh) would go on."""

    def _library(self) -> Any:
        """What does the work: channels-redis's own methods for this layer."""
        raise NotImplementedError

    async def receive(self, channel: str) -> dict[str, Any]:
        return await ending_on_cancel(self._library().receive(channel))

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await ending_on_cancel(self._library().send(channel, message))

    async def group_add(self, group: str, channel: str) -> None:
        await ending_on_cancel(self._library().group_add(group, channel))

    async def group_discard(self, group: str, channel: str) -> None:
        await ending_on_cancel(self._library().group_discard(group, channel))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await ending_on_cancel(self._library().group_send(group, message))


class RedisChannelLayer(_EndsOnCancel, _RedisChannelLayer):
    """channels-redis's list-based layer (the default, REACTIVE_CHANNEL_LAYER=redis)."""

    def _library(self) -> Any:
        return super(_EndsOnCancel, self)


class RedisPubSubChannelLayer(_EndsOnCancel, _RedisPubSubChannelLayer):
    """channels-redis's pub/sub layer (REACTIVE_CHANNEL_LAYER=pubsub), which hands every call to a layer of
    the running loop; its receive waits on Redis too (a subscribe) before its queue."""

    def _library(self) -> Any:
        return self._get_layer()
