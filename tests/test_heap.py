"""Settled sockets leave CPython's full collections (client_site.web.heap), and leave nothing once closed.

The settler's timing is driven by the event loop's own timers (sockets arrive through ``call_later``) and
each step waits for its condition with a deadline: never for a fixed time.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from django.contrib.auth import get_user_model
from websockets.asyncio.client import ClientConnection, connect

from client_site.web import heap
from reactive.up import WS_OPTIONS
from tests.support.realtime import run, session_cookie, until
from tests.support.resolve_commands import uvicorn_params
from tests.support.services import free_port

SOCKETS = 200


@pytest.fixture(autouse=True)
def nothing_frozen_before() -> None:
    gc.unfreeze()  # (conftest unfreezes after each test)


class Freezes:
    """A settler's freeze that only notes when it ran and whether it thawed."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, bool]] = []

    def __call__(self, thaw: bool) -> None:
        self.calls.append((asyncio.get_running_loop().time(), thaw))

    @property
    def thaws(self) -> list[bool]:
        return [thawed for _, thawed in self.calls]

    async def count(self, n: int, timeout: float = 5) -> None:
        await until(lambda: len(self.calls) >= n, timeout, what=f"{n} freezes")


def settle_scenario(scenario: Callable[[heap.Settler, Freezes], Awaitable[None]], **options: Any) -> Freezes:
    """Run ``scenario`` on a fresh loop with a settler whose freezes are noted (``options``: its own)."""
    freezes = Freezes()
    asyncio.run(scenario(heap.Settler(freeze=freezes, **options), freezes))
    return freezes


async def sockets_arriving(settler: heap.Settler, count: int, every: float) -> float:
    """``count`` new sockets, ``every`` seconds apart, on the loop's timers; returns the last one's time."""
    loop = asyncio.get_running_loop()
    for i in range(count):
        loop.call_later(i * every, settler.connected)
    last = loop.time() + (count - 1) * every
    await until(lambda: settler.open == count, timeout=count * every + 5, what="the sockets arrived")
    return last


def test_a_wave_of_sockets_gets_one_freeze_after_its_last_socket() -> None:
    last_socket: list[float] = []

    async def scenario(settler: heap.Settler, freezes: Freezes) -> None:
        last_socket.append(await sockets_arriving(settler, 5, every=0.05))
        await freezes.count(1)
        assert not settler.freeze_pending, "a second freeze for the same wave"

    freezes = settle_scenario(scenario, settle=0.5, max_delay=10)
    (frozen_at, thawed), *more = freezes.calls
    assert not more, "one wave, one freeze"
    assert frozen_at >= last_socket[0] + 0.4, "froze before the wave had settled"
    assert not thawed, "nothing closed, nothing to thaw"


def test_a_steady_stream_of_sockets_is_frozen_at_the_latest_after_the_max_delay() -> None:
    started: list[float] = []

    async def scenario(settler: heap.Settler, freezes: Freezes) -> None:
        started.append(asyncio.get_running_loop().time())
        await sockets_arriving(settler, 50, every=0.05)  # never quiet for 0.5 s
        await freezes.count(2)

    freezes = settle_scenario(scenario, settle=0.5, max_delay=1)
    assert freezes.calls[0][0] - started[0] == pytest.approx(1, abs=0.2)


def test_a_quarter_of_the_sockets_closed_thaws_once_at_the_next_freeze() -> None:
    """(A quarter, and at least ``min_closed``: 20 here.)"""

    async def scenario(settler: heap.Settler, freezes: Freezes) -> None:
        wave = [settler.connected() for _ in range(100)]
        await freezes.count(1)
        for mark in wave[:24]:
            settler.closed(mark)  # 24 of 100: not yet
        assert not settler.freeze_pending
        settler.closed(wave[24])  # 25 of 100: the next freeze thaws, and one comes without a new socket
        assert settler.freeze_pending
        await freezes.count(2)
        settler.connected()
        await freezes.count(3)

    freezes = settle_scenario(scenario, settle=0.05, max_delay=1, min_closed=20)
    assert freezes.thaws == [False, True, False]


def test_sockets_closed_before_any_freeze_never_thaw() -> None:
    """A flood of refused handshakes: young objects, collected as usual, never a reason for a full walk."""

    async def scenario(settler: heap.Settler, freezes: Freezes) -> None:
        for _ in range(10):
            settler.connected()
        await freezes.count(1)
        for _ in range(100):
            settler.closed(settler.connected())
        await freezes.count(2)

    freezes = settle_scenario(scenario, settle=0.05, max_delay=1, min_closed=1)
    assert freezes.thaws == [False, False]


def test_a_small_process_waits_for_the_minimum_of_closes_before_a_thaw() -> None:
    """Half of 20 sockets closed is 10 closes: not worth walking Django's own objects for."""

    async def scenario(settler: heap.Settler, freezes: Freezes) -> None:
        wave = [settler.connected() for _ in range(20)]
        await freezes.count(1)
        for mark in wave[:10]:
            settler.closed(mark)
        assert not settler.freeze_pending
        settler.connected()
        await freezes.count(2)
        settler.closed(wave[10])
        await freezes.count(3)

    freezes = settle_scenario(scenario, settle=0.05, max_delay=1, min_closed=11)
    assert freezes.thaws == [False, False, True]


def test_a_fast_wave_is_frozen_every_so_many_sockets_without_waiting_for_its_end() -> None:
    started: list[float] = []

    async def scenario(settler: heap.Settler, freezes: Freezes) -> None:
        started.append(asyncio.get_running_loop().time())
        for _ in range(1200):
            settler.connected()
        await freezes.count(1)
        assert not settler.freeze_pending

    freezes = settle_scenario(scenario, settle=10, max_delay=10, every_sockets=500)
    # Long before the wave settles (10 s): at the 500th socket, not at its end
    assert len(freezes.calls) == 1 and freezes.calls[0][0] - started[0] < 5, freezes.calls


def test_every_so_many_freezes_thaw_once_even_without_closes() -> None:
    """What was alive at a freeze for other reasons (a request in progress) may end in a cycle later."""

    async def scenario(settler: heap.Settler, freezes: Freezes) -> None:
        for n in range(heap.THAW_EVERY_FREEZES + 2):
            settler.connected()
            await freezes.count(n + 1)

    freezes = settle_scenario(scenario, settle=0.001, max_delay=1)
    thaws = [i for i, thawed in enumerate(freezes.thaws) if thawed]
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


def tracked_objects() -> int:
    return len(gc.get_objects()) + gc.get_freeze_count()


@pytest.mark.django_db(transaction=True)
def test_clock_sockets_under_uvicorn_are_frozen_once_settled_and_freed_once_closed(redis_layer: str) -> None:
    """The stack as served (uvicorn's websockets protocol, Channels, the clock consumer), in this process."""
    from client_site.asgi import application

    cookie = session_cookie(get_user_model().objects.create(username="alice", first_name="Alice"))
    port = free_port()
    served = uvicorn_params(["client_site.asgi:application", *WS_OPTIONS])  # as reactive up serves it
    server = uvicorn.Server(
        uvicorn.Config(
            application,
            host="127.0.0.1",
            port=port,
            ws=served["ws"],
            ws_per_message_deflate=served["ws_per_message_deflate"],
            lifespan="off",
            log_level="warning",
        )
    )

    async def clock_socket() -> ClientConnection:
        headers = {"Origin": f"http://127.0.0.1:{port}", "Cookie": f"sessionid={cookie}"}
        ws = await connect(f"ws://127.0.0.1:{port}/time/tic/", additional_headers=headers, compression=None)
        await ws.recv()  # the current time, at once
        return ws

    async def scenario() -> dict[str, int]:
        settler = heap._settlers[asyncio.get_running_loop()] = heap.Settler(
            settle=0.3, max_delay=5, min_closed=SOCKETS
        )

        async def frozen_since(freezes: int, what: str) -> None:
            await until(lambda: settler.freezes > freezes and not settler.freeze_pending, what=what)

        serving = asyncio.create_task(server.serve())
        await until(lambda: server.started, what="uvicorn started")
        staying = [await clock_socket() for _ in range(10)]
        await frozen_since(0, "these first sockets (and everything before them) frozen")
        figures = {"before": tracked_objects(), "frozen before": gc.get_freeze_count()}
        freezes = settler.freezes
        wave = [await clock_socket() for _ in range(SOCKETS)]
        await frozen_since(freezes, "the wave frozen")
        figures["frozen by the wave"] = gc.get_freeze_count() - figures.pop("frozen before")
        figures["not frozen"] = len(gc.get_objects())
        freezes = settler.freezes
        for ws in wave:
            await ws.close()
        del wave  # this side's connections go too: the count is the whole process's
        await until(lambda: settler.open == len(staying), what="the server saw the sockets close")
        await frozen_since(freezes, "over a quarter closed: the next freeze thaws and collects")
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
