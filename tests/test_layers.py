"""A cancelled layer call ends with the cancel, even when redis-py swallowed it (reactive/layers.py).

On Python 3.11, redis-py's ``asyncio.wait_for`` around a command returns instead of raising when the
cancel lands just as the command completes (CPython gh-86296). The race is a matter of microseconds, so
here channels-redis's own method is made to swallow the first cancel, as it then does, and go on with the
real call on the test Redis; the site's layer (from the site's settings) must still end with the cancel.
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
    "pubsub": channels_redis.pubsub.RedisPubSubLoopLayer,  # the pub/sub layer hands its calls to it
}

CALLS = {  # a layer method and its arguments (the group "g" and a fresh channel "c")
    "receive": lambda c: (c,),
    "send": lambda c: (c, {"type": "x"}),
    "group_add": lambda c: ("g", c),
    "group_discard": lambda c: ("g", c),
    "group_send": lambda c: ("g", {"type": "x"}),
}


def swallow_first_cancel(monkeypatch: pytest.MonkeyPatch, backend: str, method: str) -> list[str]:
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

    monkeypatch.setattr(library, method, as_on_python_311)
    return seen


@pytest.mark.parametrize("method", sorted(CALLS))
def test_a_cancelled_call_ends_cancelled_even_when_the_cancel_is_swallowed(
    redis_layer: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from channels.layers import get_channel_layer

    seen = swallow_first_cancel(monkeypatch, redis_layer, method)

    async def scenario() -> tuple[bool, bool, dict[str, Any]]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        call = asyncio.ensure_future(getattr(layer, method)(*CALLS[method](channel)))
        await until(lambda: seen == ["in flight"], what=f"{method} under way")
        call.cancel()  # a websocket closed, a refresh stopped, a timeout fired
        done, _ = await asyncio.wait({call}, timeout=10)
        if not done:
            call.cancel()  # not to leave it behind: the assertions say what went wrong
        monkeypatch.undo()
        other = await layer.new_channel()
        await layer.send(other, {"type": "still.working"})
        after = await asyncio.wait_for(layer.receive(other), 10)
        return bool(done), call.cancelled(), after

    ended, cancelled, after = run(scenario)
    assert ended, f"{method} did not end after its cancel: {seen}"
    assert cancelled, f"{method} returned as if it had not been cancelled: {seen}"
    assert seen[:2] == ["in flight", "cancel swallowed"]
    assert after["type"] == "still.working"  # the layer serves the next call as before


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
