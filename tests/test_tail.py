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
