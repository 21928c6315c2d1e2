"""Keeps a web process's long-lived socket objects out of CPython's full garbage collections.

An open websocket holds about 140 objects that the garbage collector tracks: uvicorn's protocol, the
middleware coroutines, the consumer, its session and user. CPython 3.11 runs a full collection after
every 25% growth of long-lived objects, and a full collection walks all of them: at 5,000 sockets that
is 0.6-0.8 s in which the process writes no frame, a clock tick late for every socket (measured with
bench/fanout.py, docs/benchmarks.md). A wave of connections (5,000 pages reconnecting after a deploy)
brings a dozen such collections, each longer than the last.

So once a wave has settled, the process moves what is alive into the permanent generation
(``gc.freeze``), which collections skip. The freeze first runs a full collection, which walks only what
is not frozen yet: garbage is collected, never frozen. A long wave is frozen every FREEZE_EVERY_SOCKETS
sockets, so that this collection stays short too.

A closed socket's objects are freed by reference counting, frozen or not, except those in a reference
cycle (websockets' protocol and its parser are one): frozen, a cycle waits for a ``gc.unfreeze``. So a
freeze thaws first, and its collection walks the whole heap once, when the frozen sockets closed since
the last thaw reach a quarter of the sockets open plus those (and THAW_AFTER_CLOSED_AT_LEAST): the pace
CPython itself keeps for long-lived objects, paid for churn only, not for growth. A socket that closes
before any freeze (a refused handshake, a page left at once) was never frozen and counts for nothing: a
flood of refused connections brings no full collection. Objects that were alive at a freeze for another
reason (a request in progress) may also end in a cycle later: every THAW_EVERY_FREEZES freezes thaw too.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

SETTLE_SECONDS = 1.0  # a freeze follows the last new socket of a wave by this long...
MAX_DELAY_SECONDS = 5.0  # ...and comes at most this long after the first one, under a steady stream...
# ...or once this many new sockets wait, in a fast wave: the collection before the freeze then walks
# about 70,000 objects, some 0.07 s here.
FREEZE_EVERY_SOCKETS = 500
THAW_AFTER_CLOSED_SHARE = 0.25
# A small process thaws only after this many closes: its heap is mostly Django's own objects, and the
# few cycles a closed socket leaves (about a dozen objects) do not justify walking them all each time.
THAW_AFTER_CLOSED_AT_LEAST = 250
THAW_EVERY_FREEZES = 32

FreezeMark = int  # how many freezes had run when a socket connected: it was frozen if more ran since


def freeze_survivors(thaw: bool) -> None:
    """Collect first (only what is not frozen yet, unless thawed), so that no garbage is ever frozen."""
    if thaw:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


class Settler:
    """Debounces freezes on the event loop that serves the sockets: one per wave of new sockets.

    It keeps no timer handle (a handle holds its loop, and settlers are kept per loop, weakly): the call
    it armed last is the one that counts; it moves itself on when the wave went on past it, and an
    earlier deadline (FREEZE_EVERY_SOCKETS reached) arms an earlier call, which makes the other a no-op.
    """

    def __init__(
        self,
        settle: float = SETTLE_SECONDS,
        max_delay: float = MAX_DELAY_SECONDS,
        freeze: Callable[[bool], None] = freeze_survivors,
        min_closed: int = THAW_AFTER_CLOSED_AT_LEAST,
        every_sockets: int = FREEZE_EVERY_SOCKETS,
    ) -> None:
        self.settle = settle
        self.max_delay = max_delay
        self.freeze = freeze
        self.min_closed = max(1, min_closed)
        self.every_sockets = max(1, every_sockets)
        self.open = 0
        self.waiting = 0  # sockets connected since the last freeze
        self.closed_since_thaw = 0
        self.freezes = 0
        self.freezes_since_thaw = 0
        self._first: float | None = None
        self._due = 0.0
        self._armed_at: float | None = None

    @property
    def freeze_pending(self) -> bool:
        return self._armed_at is not None

    def connected(self) -> FreezeMark:
        """Note a new socket; the freeze moves to ``settle`` from now (``max_delay`` at most)."""
        self.open += 1
        self.waiting += 1
        self._schedule()
        return self.freezes

    def closed(self, mark: FreezeMark) -> None:
        self.open -= 1
        if self.freezes == mark:
            return  # never frozen: its objects go like any others
        self.closed_since_thaw += 1
        if self._thaw_due():
            self._schedule()

    def _thaw_due(self) -> bool:
        if self.freezes_since_thaw >= THAW_EVERY_FREEZES:
            return True
        seen = self.open + self.closed_since_thaw
        return self.closed_since_thaw >= max(self.min_closed, seen * THAW_AFTER_CLOSED_SHARE)

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a socket's coroutine closed after its loop: the next socket schedules
            return
        now = loop.time()
        if self._first is None:
            self._first = now
        self._due = min(now + self.settle, self._first + self.max_delay)
        if self.waiting >= self.every_sockets:
            self._due = now
        if self._armed_at is None or self._due < self._armed_at:
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._armed_at = self._due
        loop.call_at(self._due, self._fire, self._due)

    def _fire(self, armed_at: float) -> None:
        if armed_at != self._armed_at:
            return  # an earlier call took its place
        loop = asyncio.get_running_loop()
        if self._due > loop.time() + 0.001:  # the wave went on: wait for its new end
            self._arm(loop)
            return
        self._armed_at = None
        self._first = None
        self.waiting = 0
        thaw = self._thaw_due()
        if thaw:
            self.closed_since_thaw = self.freezes_since_thaw = 0
        self.freezes += 1
        self.freezes_since_thaw += 1
        self.freeze(thaw)


_settlers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Settler] = weakref.WeakKeyDictionary()

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


def settler() -> Settler:
    """The settler of the running event loop (servers run one; tests run many)."""
    loop = asyncio.get_running_loop()
    if loop not in _settlers:
        _settlers[loop] = Settler()
    return _settlers[loop]


def freeze_settled_sockets(app: App) -> App:
    """ASGI middleware for the websocket side: counts sockets in and out for the process's settler."""

    async def middleware(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        sockets = settler()
        mark = sockets.connected()
        try:
            await app(scope, receive, send)
        finally:
            sockets.closed(mark)

    return middleware
