"""Settled sockets leave CPython's full collections (client_site.web.heap), and leave nothing once closed."""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest
import uvicorn
from django.contrib.auth import get_user_model
from websockets.asyncio.client import ClientConnection, connect

from client_site.web import heap
from reactive.up import WS_OPTIONS
from tests.support.realtime import run, session_cookie, until

SOCKETS = 200


@pytest.fixture(autouse=True)
def nothing_frozen_before() -> None:
    gc.unfreeze()  # (conftest unfreezes after each test)


class Freezes:
    def __init__(self) -> None:
        self.calls: list[tuple[float, bool]] = []

    def __call__(self, thaw: bool) -> None:
        self.calls.append((asyncio.get_running_loop().time(), thaw))


def test_a_wave_of_sockets_gets_one_freeze_after_its_last_socket() -> None:
    freezes = Freezes()

    async def scenario() -> float:
        settler = heap.Settler(settle=0.5, max_delay=10, freeze=freezes)
        for _ in range(5):
            settler.connected()
            await asyncio.sleep(0.05)
        last = asyncio.get_running_loop().time()
        await asyncio.sleep(1)
        return last

    last_socket = asyncio.run(scenario())
    assert len(freezes.calls) == 1, "one wave, one freeze"
    frozen_at, thawed = freezes.calls[0]
    assert frozen_at >= last_socket + 0.4, "froze before the wave had settled"
    assert not thawed, "nothing closed, nothing to thaw"


def test_a_steady_stream_of_sockets_is_frozen_at_the_latest_after_the_max_delay() -> None:
    freezes = Freezes()

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        settler = heap.Settler(settle=0.5, max_delay=1, freeze=freezes)
        start = loop.time()
        while loop.time() - start < 2.5:  # never quiet for 0.5 s
            settler.connected()
            await asyncio.sleep(0.05)
        return start

    start = asyncio.run(scenario())
    assert len(freezes.calls) >= 2, "a stream that never settles was never frozen"
    assert freezes.calls[0][0] - start == pytest.approx(1, abs=0.2)


def test_a_quarter_of_the_sockets_closed_thaws_once_at_the_next_freeze() -> None:
    """(A quarter, and at least ``min_closed``: 20 here.)"""
    freezes = Freezes()

    async def scenario() -> None:
        settler = heap.Settler(settle=0.05, max_delay=1, freeze=freezes, min_closed=20)
        wave = [settler.connected() for _ in range(100)]
        await asyncio.sleep(0.15)
        for freezes_at_connect in wave[:24]:
            settler.closed(freezes_at_connect)  # 24 of 100: not yet
        await asyncio.sleep(0.15)
        settler.closed(wave[24])  # 25 of 100: the next freeze thaws, and one comes without a new socket
        await asyncio.sleep(0.15)
        settler.connected()
        await asyncio.sleep(0.15)

    asyncio.run(scenario())
    assert [thawed for _, thawed in freezes.calls] == [False, True, False]


def test_sockets_closed_before_any_freeze_never_thaw() -> None:
    """A flood of refused handshakes: young objects, collected as usual, never a reason for a full walk."""
    freezes = Freezes()

    async def scenario() -> None:
        settler = heap.Settler(settle=0.05, max_delay=1, freeze=freezes, min_closed=1)
        for _ in range(10):
            settler.connected()
        await asyncio.sleep(0.15)
        for _ in range(100):
            settler.closed(settler.connected())
        await asyncio.sleep(0.15)

    asyncio.run(scenario())
    assert [thawed for _, thawed in freezes.calls] == [False, False]


def tracked_objects() -> int:
    return len(gc.get_objects()) + gc.get_freeze_count()


@pytest.mark.django_db(transaction=True)
def test_clock_sockets_under_uvicorn_are_frozen_once_settled_and_freed_once_closed(redis_layer: str) -> None:
    """The stack as served (uvicorn's websockets protocol, Channels, the clock consumer), in this process."""
    from client_site.asgi import application

    cookie = session_cookie(get_user_model().objects.create(username="alice", first_name="Alice"))
    options = dict(zip(WS_OPTIONS[::2], WS_OPTIONS[1::2], strict=True))  # as reactive up serves it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            application,
            host="127.0.0.1",
            port=port,
            ws_per_message_deflate=options["--ws-per-message-deflate"] == "true",
            lifespan="off",
            log_level="warning",
        )
    )

    async def clock_socket() -> ClientConnection:
        headers = {"Origin": "http://127.0.0.1", "Cookie": f"sessionid={cookie}"}
        ws = await connect(f"ws://127.0.0.1:{port}/time/tic/", additional_headers=headers, compression=None)
        await ws.recv()  # the current time, at once
        return ws

    async def scenario() -> dict[str, int]:
        heap._settlers[asyncio.get_running_loop()] = heap.Settler(settle=0.3, max_delay=5, min_closed=SOCKETS)
        serving = asyncio.create_task(server.serve())
        await until(lambda: server.started, what="uvicorn started")
        staying = [await clock_socket() for _ in range(10)]
        await asyncio.sleep(0.6)  # these first sockets (and everything before them) are frozen
        figures = {"before": tracked_objects(), "frozen before": gc.get_freeze_count()}
        wave = [await clock_socket() for _ in range(SOCKETS)]
        await asyncio.sleep(0.6)
        figures["frozen by the wave"] = gc.get_freeze_count() - figures.pop("frozen before")
        figures["not frozen"] = len(gc.get_objects())
        for ws in wave:
            await ws.close()
        del wave  # this side's connections go too: the count is the whole process's
        await until(lambda: len(server.server_state.connections) == len(staying), what="the sockets closed")
        await asyncio.sleep(0.6)  # over a quarter closed: the next freeze thaws and collects
        figures["after"] = tracked_objects()
        for ws in staying:
            await ws.close()
        server.should_exit = True
        await serving
        return figures

    figures = run(scenario)  # (database calls in this thread, as pytest-django wants them)
    assert figures["frozen by the wave"] > 50 * SOCKETS, figures
    assert figures["not frozen"] < figures["frozen by the wave"] / 10, figures
    # The wave's reference cycles (websockets' protocol and its parser, at both ends: about a sixth of
    # what it froze) stay frozen unless the closes thaw them; a few hundred objects of the process's own
    # (caches filled meanwhile, after many tests) may remain.
    assert figures["after"] - figures["before"] < figures["frozen by the wave"] / 20, figures


def test_a_small_process_waits_for_the_minimum_of_closes_before_a_thaw() -> None:
    """Half of 20 sockets closed is 10 closes: not worth walking Django's own objects for."""
    freezes = Freezes()

    async def scenario() -> None:
        settler = heap.Settler(settle=0.05, max_delay=1, freeze=freezes, min_closed=11)
        wave = [settler.connected() for _ in range(20)]
        await asyncio.sleep(0.15)
        for freezes_at_connect in wave[:10]:
            settler.closed(freezes_at_connect)
        settler.connected()
        await asyncio.sleep(0.15)
        settler.closed(wave[10])
        await asyncio.sleep(0.15)

    asyncio.run(scenario())
    assert [thawed for _, thawed in freezes.calls] == [False, False, True]


def test_a_fast_wave_is_frozen_every_so_many_sockets_without_waiting_for_its_end() -> None:
    freezes = Freezes()

    async def scenario() -> float:
        settler = heap.Settler(settle=10, max_delay=10, freeze=freezes, every_sockets=500)
        start = asyncio.get_running_loop().time()
        for _ in range(1200):
            settler.connected()
        await asyncio.sleep(0.1)
        return start

    start = asyncio.run(scenario())
    assert len(freezes.calls) == 1 and freezes.calls[0][0] - start < 0.1, freezes.calls


def test_every_so_many_freezes_thaw_once_even_without_closes() -> None:
    """What was alive at a freeze for other reasons (a request in progress) may end in a cycle later."""
    freezes = Freezes()

    async def scenario() -> None:
        settler = heap.Settler(settle=0.001, max_delay=1, freeze=freezes)
        for _ in range(heap.THAW_EVERY_FREEZES + 2):
            settler.connected()
            await asyncio.sleep(0.02)

    asyncio.run(scenario())
    thaws = [i for i, (_, thawed) in enumerate(freezes.calls) if thawed]
    assert thaws == [heap.THAW_EVERY_FREEZES], thaws


def test_a_finished_loop_is_not_kept_alive_by_its_settler() -> None:
    """Tests run many loops; a pending freeze must not keep one (and its settler) in memory."""
    import weakref

    async def scenario() -> weakref.ref[asyncio.AbstractEventLoop]:
        heap.settler().connected()  # a freeze is pending when the loop ends
        return weakref.ref(asyncio.get_running_loop())

    loop = asyncio.run(scenario())
    gc.collect()
    assert loop() is None


def test_a_socket_closed_after_its_loop_ended_only_counts() -> None:
    settler = heap.Settler(min_closed=1)

    async def scenario() -> heap.FreezeMark:
        return settler.connected() - 1  # as if a freeze had run since it connected

    settler.closed(asyncio.run(scenario()))  # no running loop: nothing to schedule, nothing raised
    assert settler.open == 0 and settler.closed_since_thaw == 1
