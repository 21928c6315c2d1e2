"""Keeps a web process's long-lived socket objects out of CPython's full garbage collections.

An open websocket holds about 140 objects that the garbage collector tracks: uvicorn's protocol, the
middleware coroutines, the consumer, its session and user. CPython 3.11 runs a full collection after
every 25% growth of long-lived objects, and a full collection walks all of them: at 5,000 sockets that
is 0.6-0.8 s in which the process writes no frame, a clock tick late for every socket (measured with
bench/fanout.py, docs/benchmarks.md). A wave of connections (5,000 pages reconnecting after a deploy)
brings a dozen such collections, each longer than the last.

So once a wave has settled, the process moves what is alive into the permanent generation
(``gc.freeze``), which collections skip. The freeze first runs a full collection, which walks only what
is not frozen yet (a few seconds' growth): garbage is collected, never frozen.

A closed socket's objects are freed by reference counting, frozen or not, except those in a reference
cycle (websockets' protocol and its parser are one): frozen, a cycle waits for a ``gc.unfreeze``. So
once the frozen sockets closed since the last thaw reach a quarter of the sockets seen since (and 250),
the next
freeze thaws first and its collection walks the whole heap, once: the pace CPython itself keeps for
long-lived objects, paid for churn only, not for growth. A socket that closes before any freeze (a
refused handshake, a page left at once) was never frozen and counts for nothing: a flood of refused
connections brings no full collection.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from typing import Any

SETTLE_SECONDS = 1.0  # a freeze follows the last new socket of a wave by this long...
# ...and comes at most this long after the first one, under a steady stream: the collection before it
# then walks at most this long's growth (a few hundred sockets at a fast wave, well under 0.1 s).
MAX_DELAY_SECONDS = 5.0
THAW_AFTER_CLOSED_SHARE = 0.25
# A small process thaws only after this many closes: its heap is mostly Django's own objects, and the
# few cycles a closed socket leaves (about a dozen objects) do not justify walking them all each time.
THAW_AFTER_CLOSED_AT_LEAST = 250


def freeze_survivors(thaw: bool) -> None:
    if thaw:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


class Settler:
    """Debounces freezes on the event loop that serves the sockets: one per wave of new sockets."""

    def __init__(
        self,
        settle: float = SETTLE_SECONDS,
        max_delay: float = MAX_DELAY_SECONDS,
        freeze: Callable[[bool], None] = freeze_survivors,
        min_closed: int = THAW_AFTER_CLOSED_AT_LEAST,
    ) -> None:
        self.settle = settle
        self.max_delay = max_delay
        self.freeze = freeze
        self.min_closed = max(1, min_closed)
        self.open = 0
        self.closed_since_thaw = 0
        self.freezes = 0
        self._first: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connected(self) -> int:
        """Note a new socket; the freeze moves to ``settle`` from now (``max_delay`` at most).

        Returns the number of freezes so far, for ``closed``.
        """
        self.open += 1
        self._schedule()
        return self.freezes

    def closed(self, freezes_at_connect: int) -> None:
        self.open -= 1
        if self.freezes == freezes_at_connect:
            return  # never frozen: its objects go like any others
        self.closed_since_thaw += 1
        if self._thaw_due():
            self._schedule()

    def _thaw_due(self) -> bool:
        seen = self.open + self.closed_since_thaw
        return self.closed_since_thaw >= max(self.min_closed, seen * THAW_AFTER_CLOSED_SHARE)

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._first is None:
            self._first = now
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(min(now + self.settle, self._first + self.max_delay), self._run)

    def _run(self) -> None:
        self._first = self._timer = None
        thaw = self._thaw_due()
        if thaw:
            self.closed_since_thaw = 0
        self.freezes += 1
        self.freeze(thaw)


_settlers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Settler] = weakref.WeakKeyDictionary()


def settler() -> Settler:
    """The settler of the running event loop (servers run one; tests run many)."""
    loop = asyncio.get_running_loop()
    if loop not in _settlers:
        _settlers[loop] = Settler()
    return _settlers[loop]


def freeze_settled_sockets(app: Any) -> Any:
    """ASGI middleware for the websocket side: counts sockets in and out for the process's settler."""

    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        sockets = settler()
        freezes = sockets.connected()
        try:
            return await app(scope, receive, send)
        finally:
            sockets.closed(freezes)

    return middleware
