"""Fixtures and helpers for the realtime tests: a real Redis channel layer, sessions, async scenarios."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from asgiref.sync import async_to_sync

from reactive import settings as reactive_settings

T = TypeVar("T")


@pytest.fixture(params=sorted(reactive_settings.CHANNEL_LAYER_BACKENDS))
def redis_layer(
    request: pytest.FixtureRequest,
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> Iterator[str]:
    """The client site's channels-redis layer (each backend in turn) on the test Redis, fresh prefix."""
    from channels.layers import channel_layers

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REACTIVE_PREFIX", prefix)
    monkeypatch.setenv("REACTIVE_CHANNEL_LAYER", request.param)
    settings.CHANNEL_LAYERS = reactive_settings.channel_layers("alpha")
    channel_layers.backends.clear()
    yield request.param
    channel_layers.backends.clear()


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run an async scenario from a sync test (consumers' database calls then run in this thread)."""
    result: T = async_to_sync(scenario)()
    return result


def session_cookie(user: Any) -> str:
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return str(client.cookies[settings.SESSION_COOKIE_NAME].value)


async def until(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """The async twin of services.eventually: poll ``check`` on the running loop until a deadline."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.02)  # poll interval under a deadline


async def group_members(layer: Any, group: str) -> set[str]:
    """A group's members as the layer knows them: Redis' sorted set, or the process's subscriptions."""
    if hasattr(layer, "_get_layer"):  # RedisPubSubChannelLayer: the group is this process's business
        own = layer._get_layer()
        return set(own.groups.get(own._get_group_channel_name(group), ()))
    connection = layer.connection(layer.consistent_hash(group))
    return {member.decode() for member in await connection.zrange(layer._group_key(group), 0, -1)}


def web_log(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """What the client site logged (reactive.web), in order: (level name, message)."""
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "reactive.web"]
