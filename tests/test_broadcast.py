"""The per-process fan-out of a broadcast group (client_site.web.broadcast)."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Any

import pytest

from client_site.web import broadcast as fanout
from tests.support.realtime import run, until

FRAME = {"type": "clock.tick", "time": "03:04:05", "iso": "2026-01-02T03:04:05.678+00:00"}


def identity(message: dict[str, Any]) -> dict[str, Any]:
    return message


class Socket:
    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.frames: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        if self.behaviour == "stuck":
            await asyncio.Event().wait()  # a client that stopped reading: the buffer never drains
        if self.behaviour == "closed":
            raise ConnectionResetError("gone")
        self.frames.append(frame)


def test_one_stuck_or_closed_socket_does_not_hold_back_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "SEND_TIMEOUT_SECONDS", 0.2)
    sockets = [Socket(), Socket("stuck"), Socket(), Socket("closed"), Socket()]

    async def scenario() -> tuple[int, int]:
        group = fanout.LocalBroadcast("clock", identity)
        for socket in sockets:
            group.sockets[socket] = socket.send
        delivered = await group.deliver(FRAME)
        return delivered, len(group.sockets)

    assert run(scenario) == (3, 3)
    for socket in (sockets[0], sockets[2], sockets[4]):
        assert socket.frames == [{"type": "websocket.send", "text": json.dumps(FRAME)}]


def busy_for(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_long_pass_over_healthy_sockets_drops_none(monkeypatch: pytest.MonkeyPatch) -> None:
    # A busy process: every send completes, but the whole pass takes far longer than the send timeout.
    monkeypatch.setattr(fanout, "SEND_TIMEOUT_SECONDS", 0.05)
    monkeypatch.setattr(fanout, "YIELD_EVERY", 3)
    sockets = [Socket() for _ in range(12)]

    async def slow_but_healthy(socket: Socket, frame: dict[str, Any]) -> None:
        busy_for(0.02)  # CPU-bound work that never yields, as a real send does
        await socket.send(frame)

    async def scenario() -> int:
        group = fanout.LocalBroadcast("clock", identity)
        for socket in sockets:
            group.sockets[socket] = functools.partial(slow_but_healthy, socket)
        return await group.deliver(FRAME)

    assert run(scenario) == 12
    assert all(len(socket.frames) == 1 for socket in sockets)


class FlakyLayer:
    """A channel layer whose first receive fails (Redis restarting), then delivers what is sent."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.adds: list[tuple[str, str]] = []
        self.failed = False

    async def new_channel(self) -> str:
        return f"specific.test!{len(self.adds)}"

    async def group_add(self, group: str, channel: str) -> None:
        self.adds.append((group, channel))

    async def receive(self, channel: str) -> dict[str, Any]:
        if not self.failed:
            self.failed = True
            raise ConnectionError("Redis is restarting")
        return await self.queue.get()


def test_the_fan_out_rejoins_the_group_after_the_layer_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = FlakyLayer()
    monkeypatch.setattr("channels.layers.get_channel_layer", lambda *args: layer)
    monkeypatch.setattr(fanout, "RETRY_SECONDS", (0.05,))
    socket = Socket()

    async def scenario() -> list[dict[str, Any]]:
        group = fanout.broadcast("clock", identity)
        await group.join(socket, socket.send)
        await until(lambda: len(layer.adds) == 2, what="rejoined after the failure")
        await layer.queue.put(FRAME)
        await until(lambda: socket.frames, what="the frame after rejoining")
        assert group.task is not None
        group.task.cancel()
        return socket.frames

    assert run(scenario) == [{"type": "websocket.send", "text": json.dumps(FRAME)}]
    assert [group for group, _ in layer.adds] == ["clock", "clock"]
