"""Group sends from synchronous code (the listener): delivered, on one kept connection, never blocking."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async

from reactive import groups
from tests.support.realtime import run


def test_a_sync_send_reaches_the_group(redis_layer: str) -> None:
    from channels.layers import get_channel_layer

    async def scenario() -> dict[str, Any]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("user.9", channel)
        assert await sync_to_async(groups.send_sync)("user.9", {"type": "user.changed", "n": 1})
        message: dict[str, Any] = await asyncio.wait_for(layer.receive(channel), 5)
        await layer.group_discard("user.9", channel)
        return message

    assert run(scenario) == {"type": "user.changed", "n": 1}


def test_sync_sends_keep_their_redis_connection(redis_layer: str, redis_url: str) -> None:
    """One event loop for all sends: channels-redis keeps its connections per loop, so a loop per send
    (async_to_sync) would connect to Redis anew for every notification."""
    server = redis.Redis.from_url(redis_url)
    assert groups.send_sync("user.1", {"type": "user.changed"})  # the first send connects
    before = server.info("stats")["total_connections_received"]
    for n in range(20):
        assert groups.send_sync("user.1", {"type": "user.changed", "n": n})
    assert server.info("stats")["total_connections_received"] - before <= 2  # slack for other clients


def test_a_hanging_layer_costs_a_warning_not_the_listener(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def hang(group: str, message: Any) -> None:
        await asyncio.Event().wait()  # a layer that never answers

    monkeypatch.setattr(groups, "send", hang)
    monkeypatch.setattr(groups, "SEND_TIMEOUT_SECONDS", 0.2)
    with caplog.at_level(logging.WARNING, logger="reactive.groups"):
        assert groups.send_sync("user.1", {"type": "user.changed"}) is False
    assert "could not notify group user.1" in caplog.text


def test_a_consumer_outlives_a_quiet_group(redis_layer: str) -> None:
    """A page open on a user nobody changes waits longer than channels-redis's 5 s blocking pop (and redis-py
    8's 5 s default socket timeout): the wait must go on, not end the socket."""
    from channels.layers import get_channel_layer

    async def scenario() -> dict[str, Any]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("user.quiet", channel)
        waiting = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(6)  # the quiet itself is what is tested: past the 5 s pop and socket timeouts
        await layer.group_send("user.quiet", {"type": "user.changed", "late": True})
        message: dict[str, Any] = await asyncio.wait_for(waiting, 5)
        await layer.group_discard("user.quiet", channel)
        return message

    assert run(scenario) == {"type": "user.changed", "late": True}


def test_a_group_name_is_valid_only_as_a_whole() -> None:
    assert groups.is_valid_group("clock") and groups.is_valid_group("user.42")
    assert not groups.is_valid_group("clock\n")  # `reactive tail $'clock\n'` would join another group
    assert not groups.is_valid_group("x" * 100) and not groups.is_valid_group("")


def test_notify_counts_a_change_only_once_all_its_messages_went(monkeypatch: pytest.MonkeyPatch) -> None:
    """A disabled account's profile went to its room, but its end did not reach accounts.ended: the change
    is not counted as sent, so the listener sends it again (the profile twice is harmless)."""
    sent: list[str] = []

    def send_sync(group: str, message: Any) -> bool:
        if group == groups.ENDED_ACCOUNTS:
            return False
        sent.append(group)
        return True

    monkeypatch.setattr(groups, "send_sync", send_sync)
    changes = [("1", {"first_name": "A"}), ("2", {"is_active": False}), ("3", {"first_name": "C"})]
    assert groups.notify_profiles(changes) == 1
    assert sent == ["user.1", "user.2"]
