"""A cancelled layer call ends with the cancel, even when redis-py swallowed it (reactive/layers.py).

On Python 3.11, redis-py's ``asyncio.wait_for`` around a command returns instead of raising when the
cancel lands just as the command completes (CPython gh-86296). The race is a matter of microseconds, so
here channels-redis's own method is made to swallow the first cancel, as it then does, and go on with the
real call on the test Redis; the site's layer (from the site's settings) must still end with the cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import channels_redis.core
import channels_redis.pubsub
import pytest

from tests.support.realtime import run, until

LIBRARY_LAYERS = {
    "redis": channels_redis.core.RedisChannelLayer,
    "pubsub": channels_redis.pubsub.RedisPubSubLoopLayer,  # the pub/sub layer hands its calls to it
}

SOCKETS_CLOSING = 2000
CALLS = {  # a layer method and its arguments (the group "g" and a fresh channel "c")
    "receive": lambda c: (c,),
    "send": lambda c: (c, {"type": "x"}),
    "group_add": lambda c: ("g", c),
    "group_discard": lambda c: ("g", c),
    "group_send": lambda c: ("g", {"type": "x"}),
}


def swallow_first_cancel(patch: pytest.MonkeyPatch, backend: str, method: str) -> list[str]:
    """channels-redis's ``method`` as on Python 3.11 when the race hits: the cancel that lands while its
    command is in flight is swallowed, and the real call goes on. Returns what the method went through."""
    library = LIBRARY_LAYERS[backend]
    real = getattr(library, method)
    seen: list[str] = []

    async def as_on_python_311(self: Any, *args: Any) -> Any:
        seen.append("in flight")
        try:
            await asyncio.Event().wait()  # stands for the command in flight: only the cancel gets it out
        except asyncio.CancelledError:
            seen.append("cancel swallowed")
        return await real(self, *args)

    patch.setattr(library, method, as_on_python_311)
    return seen


# Where each call waits on Redis. The pub/sub layer's receive waits on its own queue once its channel is
# subscribed (new_channel does that): on Redis only when it has to subscribe first.
SWALLOWED_IN = {("pubsub", "receive"): "_subscribe_to_channel"}


@pytest.mark.parametrize("method", sorted(CALLS))
def test_a_cancelled_call_ends_cancelled_even_when_the_cancel_is_swallowed(
    redis_layer: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from channels.layers import get_channel_layer

    async def scenario() -> tuple[bool, bool, list[str], dict[str, Any]]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        if (redis_layer, method) in SWALLOWED_IN:
            channel += "-never-subscribed"
        with monkeypatch.context() as patch:
            seen = swallow_first_cancel(patch, redis_layer, SWALLOWED_IN.get((redis_layer, method), method))
            call = asyncio.ensure_future(getattr(layer, method)(*CALLS[method](channel)))
            await until(lambda: seen == ["in flight"], what=f"{method} under way")
            call.cancel()  # a websocket closed, a refresh stopped, a timeout fired
            done, _ = await asyncio.wait({call}, timeout=10)
            if not done:
                call.cancel()  # not to leave it behind: the assertions say what went wrong
        other = await layer.new_channel()
        await layer.send(other, {"type": "still.working"})
        after = await asyncio.wait_for(layer.receive(other), 10)
        return bool(done), call.cancelled(), seen, after

    ended, cancelled, seen, after = run(scenario)
    assert ended, f"{method} did not end after its cancel: {seen}"
    assert cancelled, f"{method} returned as if it had not been cancelled: {seen}"
    assert seen[:2] == ["in flight", "cancel swallowed"]
    assert after["type"] == "still.working"  # the layer serves the next call as before


def test_a_call_cancelled_twice_still_ends_before_the_cancel_raises() -> None:
    """A second cancel (a timeout, then the shutdown) must not leave the call behind, still waiting."""
    from reactive.layers import ending_on_cancel

    async def scenario() -> tuple[bool, bool]:
        released = asyncio.Event()
        inner_ended = asyncio.Event()
        seen: list[str] = []

        async def swallows_the_first_cancel() -> None:
            seen.append("in flight")
            with contextlib.suppress(asyncio.CancelledError):  # as redis-py on Python 3.11: goes on
                await asyncio.Event().wait()
            seen.append("cancel swallowed")
            try:
                await released.wait()
            finally:
                inner_ended.set()

        outer = asyncio.ensure_future(ending_on_cancel(swallows_the_first_cancel()))
        await until(lambda: seen == ["in flight"], what="the call under way")
        outer.cancel()
        await until(lambda: "cancel swallowed" in seen, what="the first cancel swallowed")
        outer.cancel()  # again, while the call is being ended
        done, _ = await asyncio.wait({outer}, timeout=10)
        return inner_ended.is_set() and bool(done), outer.cancelled()

    ended, cancelled = run(scenario)
    assert ended and cancelled


@pytest.mark.parametrize("redis_layer", ["pubsub"], indirect=True)  # the list layer's clean-up is no wait
def test_many_pubsub_receives_cancelled_at_once_unsubscribe_cleanly(
    redis_layer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Sockets closing together (a shutdown, a network blip): each receive's clean-up (its unsubscribe,
    queued behind the others on the shard's lock) is left to finish, not cut short."""
    from channels.layers import get_channel_layer

    async def scenario() -> tuple[int, int]:
        layer = get_channel_layer()
        channels = [await layer.new_channel() for _ in range(SOCKETS_CLOSING)]
        receives = [asyncio.ensure_future(layer.receive(c)) for c in channels]
        own = layer._get_layer()
        # Every receive waiting on its channel's queue (asyncio.Queue keeps its waiters in _getters).
        await until(lambda: all(own.channels[c]._getters for c in channels), what="the receives waiting")
        for receive in receives:
            receive.cancel()
        await asyncio.wait(receives, timeout=60)
        still = sum(1 for c in channels if c in own.channels)
        subscribed = sum(1 for shard in own._shards for c in channels if c in shard._subscribed_to)
        return still, subscribed

    still, subscribed = run(scenario)
    assert (still, subscribed) == (0, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_receive_returns_what_is_sent_to_its_channel_and_its_groups(redis_layer: str) -> None:
    from channels.layers import get_channel_layer

    async def scenario() -> list[dict[str, Any]]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        waiting = asyncio.ensure_future(layer.receive(channel))
        await layer.send(channel, {"type": "direct", "n": 1})
        first = await asyncio.wait_for(waiting, 10)
        await layer.group_add("g", channel)
        await layer.group_send("g", {"type": "grouped", "n": 2})
        second = await asyncio.wait_for(layer.receive(channel), 10)
        await layer.group_discard("g", channel)
        return [first, second]

    assert [m["n"] for m in run(scenario)] == [1, 2]
