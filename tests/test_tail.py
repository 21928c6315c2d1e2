"""reactive.tail: following groups, and leaving them on stop even when Redis no longer answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reactive import tail
from tests.support.realtime import run


class StalledOnLeave:
    """A layer that joins and delivers nothing, then hangs on group_discard (Redis stopped with SIGSTOP)."""

    def __init__(self) -> None:
        self.joined: list[str] = []

    async def new_channel(self) -> str:
        return f"specific.{len(self.joined)}"

    async def group_add(self, group: str, channel: str) -> None:
        self.joined.append(group)

    async def receive(self, channel: str) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("never")

    async def group_discard(self, group: str, channel: str) -> None:
        await asyncio.Event().wait()


def test_a_stop_is_quick_even_when_redis_stalls(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tail, "LEAVE_TIMEOUT_SECONDS", 0.2)
    layer = StalledOnLeave()

    async def scenario() -> int:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, stop.set)  # Ctrl-C
        return await asyncio.wait_for(tail.follow(["clock", "user.1"], print, stop, layer=layer), 10)

    caplog.set_level("DEBUG", logger="reactive.tail")
    assert run(scenario) == 0  # before: wait_for gave up, the leave hanging as long as Redis stalled
    assert layer.joined == ["clock", "user.1"]
    assert "could not leave the groups (TimeoutError" in caplog.text


class Recording(StalledOnLeave):
    """Joins, counts every group_add, delivers nothing; leaves at once."""

    async def group_discard(self, group: str, channel: str) -> None:
        return None


def test_a_long_tail_re_adds_its_memberships(monkeypatch: pytest.MonkeyPatch) -> None:
    """channels-redis forgets a member after group_expiry (a day): a tail left running went silent."""
    from tests.support.realtime import until

    monkeypatch.setattr(tail, "REJOIN_SECONDS", 0.02)
    layer = Recording()

    async def scenario() -> None:
        stop = asyncio.Event()
        following = asyncio.create_task(tail.follow(["clock", "user.1"], print, stop, layer=layer))
        await until(lambda: layer.joined.count("clock") >= 3, what="the memberships re-added")
        stop.set()
        await following

    run(scenario)
    assert layer.joined.count("user.1") >= 2


class LosesRedis(Recording):
    async def receive(self, channel: str) -> dict[str, Any]:
        from reactive.layers import ReceiveFailed

        raise ReceiveFailed("ConnectionError: Connection closed by server.")


def test_redis_going_away_under_a_tail_is_an_unreachable_service_not_a_traceback() -> None:
    """The CLI prints a ServiceUnavailable as one line and exits 3; the layer's own error was printed
    as a 60-line traceback, exit 1."""
    from reactive.errors import ServiceUnavailable

    async def scenario() -> None:
        await tail.follow(["clock"], print, asyncio.Event(), layer=LosesRedis())

    with pytest.raises(ServiceUnavailable, match="lost Redis at .*Connection closed by server"):
        run(scenario)
