"""A closed websocket's pending receive ends, even when redis-py swallowed the cancel (reactive/layers.py).

On Python 3.11, redis-py's ``asyncio.wait_for`` around a command returns instead of raising when the
cancel lands just as the command completes (CPython gh-86296). The race is a matter of microseconds, so
here channels-redis's own receive is made to swallow the first cancel, as it then does, and the site's
layer (from the site's settings, on the test Redis) must still end.
"""

from __future__ import annotations

import asyncio
from typing import Any

import channels_redis.core
import channels_redis.pubsub
import pytest

from tests.support.realtime import run, until

LIBRARY_LAYERS = {
    "redis": channels_redis.core.RedisChannelLayer,
    "pubsub": channels_redis.pubsub.RedisPubSubLoopLayer,  # the pub/sub layer hands receive to it
}


def swallow_first_cancel(monkeypatch: pytest.MonkeyPatch, backend: str) -> list[str]:
    """Make channels-redis's receive go on waiting after its first cancel; returns what it went through."""
    library = LIBRARY_LAYERS[backend]
    receive = library.receive
    seen: list[str] = []

    async def receive_as_on_python_311(self: Any, channel: str) -> Any:
        seen.append("receiving")
        try:
            return await receive(self, channel)
        except asyncio.CancelledError:
            seen.append("cancel swallowed")
        seen.append("receiving again")
        try:
            return await receive(self, channel)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    monkeypatch.setattr(library, "receive", receive_as_on_python_311)
    return seen


def test_a_cancelled_receive_ends_even_when_the_first_cancel_is_swallowed(
    redis_layer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from channels.layers import get_channel_layer

    seen = swallow_first_cancel(monkeypatch, redis_layer)

    async def scenario() -> tuple[bool, bool, dict[str, Any]]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        pending = asyncio.ensure_future(layer.receive(channel))  # a consumer's, as Channels starts it
        await until(lambda: seen == ["receiving"], what="the receive under way")
        pending.cancel()  # the websocket closed: Channels cancels the receive and waits for it
        done, _ = await asyncio.wait({pending}, timeout=10)
        if not done:
            pending.cancel()  # not to leave it behind: the assertion below says what went wrong
        other = await layer.new_channel()
        await layer.send(other, {"type": "still.working"})
        after = await asyncio.wait_for(layer.receive(other), 10)
        return bool(done), pending.cancelled(), after

    ended, cancelled, after = run(scenario)
    assert ended, f"the receive did not end after its cancel: {seen}"
    assert cancelled
    assert seen[:4] == ["receiving", "cancel swallowed", "receiving again", "cancelled"]
    assert after["type"] == "still.working"  # the layer serves the next receive as before


def test_a_receive_returns_what_is_sent_to_its_channel(redis_layer: str) -> None:
    from channels.layers import get_channel_layer

    async def scenario() -> list[dict[str, Any]]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        waiting = asyncio.ensure_future(layer.receive(channel))
        await layer.send(channel, {"type": "first", "n": 1})
        first = await asyncio.wait_for(waiting, 10)
        await layer.send(channel, {"type": "second", "n": 2})
        return [first, await asyncio.wait_for(layer.receive(channel), 10)]

    assert [m["n"] for m in run(scenario)] == [1, 2]
