"""The per-process fan-out of a broadcast group (client_site.web.broadcast)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from typing import Any

import pytest
import redis

from client_site.web import broadcast as fanout
from tests.support.realtime import group_members, run, until, web_log

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

    def __init__(self, stall_first_add: bool = False) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.adds: list[tuple[str, str]] = []
        self.failed = False
        self.stall_first_add = stall_first_add  # Redis stalled: the first group_add never answers

    async def new_channel(self) -> str:
        return f"specific.test!{len(self.adds)}"

    async def group_add(self, group: str, channel: str) -> None:
        self.adds.append((group, channel))
        if self.stall_first_add and len(self.adds) == 1:
            await asyncio.Event().wait()

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


def test_a_stalled_join_is_given_up_soon_and_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled Redis answers after the layer's socket_timeout (30 s): a join gives up sooner."""
    layer = FlakyLayer(stall_first_add=True)
    layer.failed = True  # receiving works
    monkeypatch.setattr("channels.layers.get_channel_layer", lambda *args: layer)
    monkeypatch.setattr(fanout, "JOIN_TIMEOUT_SECONDS", 0.1, raising=False)
    monkeypatch.setattr(fanout, "RETRY_SECONDS", (0.05,))
    socket = Socket()

    async def scenario() -> list[dict[str, Any]]:
        group = fanout.broadcast("clock", identity)
        try:
            await asyncio.wait_for(group.join(socket, socket.send), timeout=2)  # the page is not held
            await until(lambda: len(layer.adds) == 2, what="tried again")
            await layer.queue.put(FRAME)
            await until(lambda: socket.frames, what="the frame after joining")
        finally:
            assert group.task is not None
            group.task.cancel()
        return socket.frames

    assert run(scenario) == [{"type": "websocket.send", "text": json.dumps(FRAME)}]


def read_end(message: dict[str, Any]) -> fanout.End | None:
    if "user" not in message:
        return None
    return fanout.End(message["user"], message["code"], message.get("session"))


ENDS = fanout.Ends("ends", frozenset({"end"}), read_end)


def receiving_layer(monkeypatch: pytest.MonkeyPatch) -> FlakyLayer:
    """The fan-out's layer for a test: receiving works from the first call, and delivers what is queued."""
    layer = FlakyLayer()
    layer.failed = True
    monkeypatch.setattr("channels.layers.get_channel_layer", lambda *args: layer)
    return layer


def test_an_end_closes_its_users_sockets_and_the_others_tick_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """An account that ended closes its user's sockets with the code the end calls for; the others get
    the next tick. The process channel is in the ends group beside the broadcast's."""
    layer = receiving_layer(monkeypatch)
    mine, also_mine, other, anonymous = Socket(), Socket(), Socket(), Socket()

    async def scenario() -> dict[str, set[object]]:
        group = fanout.broadcast("clock", identity, ENDS)
        try:
            for socket, user in ((mine, "7"), (also_mine, "7"), (other, "8"), (anonymous, None)):
                await group.join(socket, socket.send, user=user)
            await layer.queue.put({"type": "end", "user": "7", "code": 4003})
            await layer.queue.put({"type": "end"})  # one this process cannot read: ignored, not fanned out
            await layer.queue.put(FRAME)
            await until(lambda: other.frames and anonymous.frames, what="the tick after the end")
            return dict(group.sockets_of)
        finally:
            assert group.task is not None
            group.task.cancel()

    sockets_of = run(scenario)
    tick = {"type": "websocket.send", "text": json.dumps(FRAME)}
    assert mine.frames == also_mine.frames == [{"type": "websocket.close", "code": 4003}]
    assert other.frames == anonymous.frames == [tick]
    assert sockets_of == {"8": {other}}
    assert sorted(group for group, _ in layer.adds) == ["clock", "ends"]


def test_a_sessions_end_closes_that_sessions_sockets_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sign-out names the user and the session: the user's sockets of other sessions tick on, and so do
    those of another user with a socket of the same session tag (a tag names a session of that user)."""
    layer = receiving_layer(monkeypatch)
    signed_out, other_session, no_session, other_user = Socket(), Socket(), Socket(), Socket()

    async def scenario() -> None:
        group = fanout.broadcast("clock", identity, ENDS)
        try:
            await group.join(signed_out, signed_out.send, user="7", session="s1")
            await group.join(other_session, other_session.send, user="7", session="s2")
            await group.join(no_session, no_session.send, user="7")
            await group.join(other_user, other_user.send, user="8", session="s1")
            await layer.queue.put({"type": "end", "user": "7", "code": 4001, "session": "s1"})
            await layer.queue.put(FRAME)
            await until(lambda: other_user.frames, what="the tick after the sign-out")
        finally:
            assert group.task is not None
            group.task.cancel()
        assert not group._ended_lately("7")  # a sign-out is no account's end: no audit of later joins

    run(scenario)
    tick = {"type": "websocket.send", "text": json.dumps(FRAME)}
    assert signed_out.frames == [{"type": "websocket.close", "code": 4001}]
    assert other_session.frames == no_session.frames == other_user.frames == [tick]


def test_a_socket_leaving_while_an_end_closes_the_others_does_not_stop_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One close waits (a paused transport); meanwhile another socket of the user leaves (the tab that
    signed out navigates away). The end looked the leaver up afterwards: KeyError, the loop rejoined, and
    the user's third socket was never closed."""
    layer = receiving_layer(monkeypatch)
    slow, leaving, third = Socket(), Socket(), Socket()

    async def scenario() -> fanout.LocalBroadcast:
        group = fanout.broadcast("clock", identity, ENDS)

        async def slow_close(frame: dict[str, Any]) -> None:
            group.leave(leaving)  # the other tab goes while this close waits
            await asyncio.sleep(0.01)
            slow.frames.append(frame)

        try:
            for socket, send in ((slow, slow_close), (leaving, leaving.send), (third, third.send)):
                await group.join(socket, send, user="7", session="s1")
            await group.end("7", 4001, "s1")
        finally:
            assert group.task is not None
            group.task.cancel()
        return group

    group = run(scenario)
    assert slow.frames == third.frames == [{"type": "websocket.close", "code": 4001}]
    assert not group.sockets and len(layer.adds) == 2  # one join, no rejoin


def test_a_message_of_another_kind_on_the_process_channel_is_dropped_not_fanned_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A newer release's message in a rolling deploy: the encoder cannot read it; it was sent as a tick
    (KeyError), and the loop that receives the ticks rejoined, ticks paused, every user audited."""
    from client_site.web.consumers import clock_frame

    layer = receiving_layer(monkeypatch)
    socket = Socket()

    async def scenario() -> None:
        group = fanout.broadcast("clock", clock_frame)
        try:
            await group.join(socket, socket.send)
            await layer.queue.put({"type": "something.new", "user": "7"})
            await layer.queue.put({"type": "clock.tick", "user": "7"})  # a tick it cannot read either
            await layer.queue.put({**FRAME})
            await until(lambda: socket.frames, what="the tick")
        finally:
            assert group.task is not None
            group.task.cancel()

    run(scenario)
    assert [json.loads(frame["text"])["time"] for frame in socket.frames] == ["03:04:05"]
    assert len(layer.adds) == 1  # no rejoin


def test_a_socket_of_a_session_that_ended_moments_before_it_joined_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its handshake read the session before the sign-out committed, and it joined after the end went by;
    the audits ask about accounts, not sessions, so nothing else would close it."""
    layer = receiving_layer(monkeypatch)
    first, late, other = Socket(), Socket(), Socket()

    async def scenario() -> None:
        group = fanout.broadcast("clock", identity, ENDS)
        try:
            await group.join(first, first.send, user="7", session="s2")
            await layer.queue.put({"type": "end", "user": "7", "code": 4001, "session": "s1"})
            await until(lambda: "s1" in group.recent_session_ends, what="the end")
            await group.join(late, late.send, user="7", session="s1")
            await group.join(other, other.send, user="7", session="s2")
        finally:
            assert group.task is not None
            group.task.cancel()

    run(scenario)
    assert late.frames == [{"type": "websocket.close", "code": 4001}]
    assert first.frames == other.frames == []


def test_a_socket_of_an_ended_session_is_closed_even_while_the_group_is_being_rejoined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handshake gives up waiting for a rejoin under way (JOIN_TIMEOUT_SECONDS): the check after that
    wait never ran, and the socket stayed open."""
    layer = receiving_layer(monkeypatch)
    other, late = Socket(), Socket()

    async def scenario() -> None:
        group = fanout.broadcast("clock", identity, ENDS)
        try:
            await group.join(other, other.send, user="8")
            await layer.queue.put({"type": "end", "user": "7", "code": 4001, "session": "s1"})
            await until(lambda: "s1" in group.recent_session_ends, what="the end")
            group.joined.clear()  # a rejoin under way: join() would wait for it
            async with asyncio.timeout(1):
                await group.join(late, late.send, user="7", session="s1")
        finally:
            assert group.task is not None
            group.task.cancel()

    run(scenario)
    assert late.frames == [{"type": "websocket.close", "code": 4001}]


class RealLayer:
    """The test's channels-redis layer, its group_add recorded and its failures staged on demand."""

    def __init__(self) -> None:
        from channels.layers import get_channel_layer

        self.layer = get_channel_layer()
        self.add, self.receive = self.layer.group_add, self.layer.receive
        self.adds: list[tuple[str, str]] = []
        self.failing_adds = 0
        self.failing_receives = 0
        self.layer.group_add, self.layer.receive = self.group_add, self.flaky_receive

    async def group_add(self, group: str, channel: str) -> None:
        self.adds.append((group, channel))
        if self.failing_adds:
            self.failing_adds -= 1
            raise redis.ConnectionError("Error 111 connecting to redis. Connection refused.")
        await self.add(group, channel)

    async def flaky_receive(self, channel: str) -> dict[str, Any]:
        if self.failing_receives:
            self.failing_receives -= 1
            raise redis.ConnectionError("Connection closed by server.")
        message: dict[str, Any] = await self.receive(channel)
        return message

    async def members(self, group: str) -> set[str]:
        return await group_members(self.layer, group)


def test_a_rejoin_after_a_failure_leaves_the_group_one_member(
    redis_layer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each Redis blip used to add a member (a new channel), sent every message until group_expiry."""
    monkeypatch.setattr(fanout, "RETRY_SECONDS", (0.05,))
    socket = Socket()

    async def scenario() -> tuple[set[str], set[str]]:
        layer = RealLayer()
        layer.failing_receives = 3
        group = fanout.broadcast("clock", identity)
        await group.join(socket, socket.send)
        await until(lambda: len(layer.adds) == 4, what="rejoined after three failures")
        await until(lambda: not layer.failing_receives, what="receiving again")
        members = await layer.members("clock")
        await layer.layer.group_send("clock", FRAME)
        await until(lambda: socket.frames, what="the frame after rejoining")
        assert group.task is not None
        group.task.cancel()
        return members, {channel for _, channel in layer.adds}

    members, joined = run(scenario)
    assert len(members) == 1 and members == joined
    assert socket.frames == [{"type": "websocket.send", "text": json.dumps(FRAME)}]


def test_the_fan_out_rejoins_a_group_redis_forgot_and_logs_a_failing_rejoin_once(
    redis_layer: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis forgets the membership after group_expiry, or with its data (FLUSHALL, eviction, a failover)
    while the connections stay up: the fan-out adds it back every REJOIN_SECONDS, through failures."""
    assert fanout.REJOIN_SECONDS <= 60  # within a minute of Redis forgetting, not an hour
    monkeypatch.setattr(fanout, "REJOIN_SECONDS", 0.05)
    socket = Socket()

    async def scenario() -> None:
        layer = RealLayer()
        group = fanout.broadcast("clock", identity)
        await group.join(socket, socket.send)
        (_, channel), *_ = layer.adds
        await layer.layer.group_discard("clock", channel)  # what Redis did
        layer.failing_adds = 3  # and it is down for three rounds
        await until(lambda: len(layer.adds) >= 6, what="rejoined after failing rejoins")  # one done
        await layer.layer.group_send("clock", FRAME)
        await until(lambda: socket.frames, what="the frame after rejoining")
        assert group.task is not None
        group.task.cancel()

    with caplog.at_level(logging.INFO, logger="reactive.web"):
        run(scenario)
    lines = web_log(caplog)
    assert lines == [
        (
            "WARNING",
            "broadcast clock: rejoining the group failed: ConnectionError: Error 111 connecting to redis. "
            "Connection refused.; retrying, silently until it works",
        ),
        ("INFO", "broadcast clock: rejoining the group works again"),
    ]


def test_an_audit_the_database_could_not_answer_is_asked_again_at_the_next_round(
    redis_layer: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After a join the fan-out asks the database which of its sockets' accounts ended (ends sent while it
    was out of the group went nowhere). The database is down at first: one warning, and the question is
    asked again at the next rejoin round, which ends the socket of the account that did end."""
    monkeypatch.setattr(fanout, "REJOIN_SECONDS", 0.05)
    asked: list[list[str]] = []

    async def audit(users: list[str]) -> dict[str, int]:
        asked.append(users)
        if len(asked) == 1:
            raise ConnectionError("the database is restarting")
        return {"7": 4004} if "7" in users else {}

    ends = fanout.Ends("ends", frozenset({"end"}), lambda m: None, audit)
    gone, other = Socket(), Socket()

    async def scenario() -> None:
        RealLayer()
        group = fanout.broadcast("clock", identity, ends)
        try:
            await group.join(gone, gone.send, user="7")
            await group.join(other, other.send, user="8")
            await until(lambda: gone.frames, what="the ended account's socket closed")
            assert group.sockets_of == {"8": {other}}
        finally:
            assert group.task is not None
            group.task.cancel()

    with caplog.at_level(logging.INFO, logger="reactive.web"):
        run(scenario)
    assert gone.frames == [{"type": "websocket.close", "code": 4004}] and other.frames == []
    # The first join's question, then the round's, about every user with sockets (the failed one included)
    assert asked[:2] == [["7"], ["7", "8"]]
    lines = web_log(caplog)
    assert lines == [
        (
            "WARNING",
            "broadcast clock: checking accounts for missed ends failed: ConnectionError: the database is "
            "restarting; retrying, silently until it works",
        ),
        ("INFO", "broadcast clock: checking accounts for missed ends works again"),
        ("INFO", "broadcast clock: closed the sockets of an account that ended unannounced here"),
    ]
