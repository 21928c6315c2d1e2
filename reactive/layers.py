"""The Channels layers a client site runs on: channels-redis's two, whose calls a cancel always ends.

Channels cancels a consumer's pending ``receive`` when its websocket closes, and waits for it to end.
redis-py sends every command through ``asyncio.wait_for`` (the layers set a socket timeout), and on
Python 3.11 ``wait_for`` returns the result instead of raising when the cancel comes just as the send
completes (CPython gh-86296, fixed in 3.12). The layer's receive then goes on waiting for a message
that never comes: the closed socket's task lives for ever, and uvicorn, which waits for it, never exits
on SIGTERM. Here the calls a site makes that wait on Redis (receive, send, group_add, group_discard,
group_send) each run in a task of their own, which is cancelled until it has ended; then the caller's
cancel raises. The pub/sub layer's receive on a subscribed channel waits on its own queue, not on
Redis: it is left as it is, cancel clean-up included."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis
from channels_redis.core import RedisChannelLayer as _RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer as _RedisPubSubChannelLayer

from reactive.errors import describe

T = TypeVar("T")


class ReceiveFailed(Exception):
    """Redis failed a receive (down, restarting, out of reach): the consumer can tell this from its own
    handlers' errors, and from a client that went away."""


# A cancelled call first gets this long to end, then is cancelled again, waiting twice as long each time
# (up to RECANCEL_MAX_SECONDS). Not sooner: a call may be busy tidying up after the first cancel (the
# pub/sub layer unsubscribes), and many sockets closing at once queue those clean-ups behind each other.
RECANCEL_SECONDS = 0.5
RECANCEL_MAX_SECONDS = 5.0


async def cancel_until_ended(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` until it has ended (its outcome is dropped). Cancelled meanwhile, this goes on all
    the same (leaving ``task`` behind is what it is for), then raises the cancel once ``task`` has ended."""
    cancelled_again, wait = False, RECANCEL_SECONDS
    while not task.done():
        task.cancel()
        try:
            await asyncio.wait({task}, timeout=wait)
        except asyncio.CancelledError:
            cancelled_again = True
        wait = min(wait * 2, RECANCEL_MAX_SECONDS)
    if cancelled_again:
        raise asyncio.CancelledError


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
        try:
            return await ending_on_cancel(self._library().receive(channel))
        except (redis.RedisError, OSError) as exc:
            raise ReceiveFailed(describe(exc)) from exc

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
    the running loop."""

    def _library(self) -> Any:
        return self._get_layer()

    async def receive(self, channel: str) -> dict[str, Any]:
        layer = self._get_layer()
        if channel in layer.channels:  # subscribed (by new_channel): a wait on its queue, which a cancel ends
            return await layer.receive(channel)  # and its unsubscribe on a cancel is not cut short
        return await super().receive(channel)  # it subscribes first: a wait on Redis
