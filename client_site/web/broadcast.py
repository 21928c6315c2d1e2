"""One channel-layer membership per process for a broadcast group, fanned out to the process's sockets.

The clock goes to every socket. With one group member per socket, each tick costs the channel layer N
receives and Channels N dispatches (a task, a queue hop and a JSON encoding per socket): at a few thousand
sockets a process spends more than the tick interval on it. Here the process joins the group once, encodes
each message once and writes it to its sockets in one pass. The group is still the layer's: a tick sent to
"clock" from any process (Celery beat, `reactive beat`) reaches every web process, and `reactive tail clock`
sees exactly what the sockets get.

A socket may name its user (the signed-in one) and its session. The process channel is then also in an
"ends" group, whose messages (an account disabled or removed, a session signed out: a few a day, not a few
a second) close that user's sockets here, or that session's only, with the close code the message calls
for: the sockets have no channel of their own that the user's group could reach. A tick pays nothing for
it but one type comparison per process.

An end can miss this process: Redis was down, or lost the membership with its data, or the process had
not joined yet; the listener that committed it was killed before its push, or cut off from Redis alone; or
the end came during a socket's handshake, after its account was read and before the socket was here. So
the database is asked (``Ends.audit``, one query per 500 users) about every named socket's user after
every (re)join and at every re-add round (REJOIN_SECONDS), and about a socket's user when it joins within
RECENT_END_SECONDS of an end of that user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from reactive.errors import FailureStreak, describe

log = logging.getLogger("reactive.web")
Send = Callable[[dict[str, Any]], Awaitable[None]]
Encode = Callable[[dict[str, Any]], dict[str, Any]]
SEND_TIMEOUT_SECONDS = 1.0  # a socket that cannot take a small frame this long is dropped from the fan-out
RETRY_SECONDS = (0.5, 1, 2, 5)
# The membership is re-added this often: Redis forgets it after group_expiry (a day), and at once when it
# loses its data while connections stay up (FLUSHALL, eviction, a failover); group_add is idempotent.
REJOIN_SECONDS = 30.0
JOIN_TIMEOUT_SECONDS = 3.0  # a stalled Redis (socket_timeout is 30 s) fails a join this soon, to be retried
YIELD_EVERY = 500  # sends in a row before the fan-out lets the event loop run other tasks
# An end is remembered this long: a socket of its user that joins meanwhile may have been let in by a read
# made before the end committed (a handshake takes JOIN_TIMEOUT_SECONDS at most, plus the database's time).
RECENT_END_SECONDS = 60.0


@dataclass(frozen=True)
class End:
    """Which sockets an end closes, and with what code."""

    user: str
    code: int
    session: str | None = None  # only the sockets opened in this session (its tag); None: all the user's


@dataclass(frozen=True)
class Ends:
    """The group whose messages end a user's sockets instead of being fanned out (see the module doc)."""

    group: str
    types: frozenset[str]  # the message types of an end
    read: Callable[[dict[str, Any]], End | None]  # None: malformed, or a kind this process cannot read
    # Of these users, those whose account has ended, each with its close code: the database's word, asked
    # when an end may have been missed (see the module doc). None: never asked.
    audit: Callable[[list[str]], Awaitable[dict[str, int]]] | None = None


class LocalBroadcast:
    """Sockets of this process (and event loop) that receive every message of one group."""

    def __init__(self, group: str, encode: Encode, ends: Ends | None = None) -> None:
        self.group = group
        self.encode = encode
        self.ends = ends
        self.sockets: dict[object, Send] = {}
        self.users: dict[object, str] = {}  # socket -> user, for the sockets that named one
        self.sessions: dict[object, str] = {}  # socket -> the tag of its session, for those that named one
        self.sockets_of: dict[str, set[object]] = {}  # user -> sockets: an end finds them without a scan
        self.task: asyncio.Task[None] | None = None
        self.joined = asyncio.Event()
        self.recent_ends: dict[str, float] = {}  # user -> when an end of theirs came (loop time)
        # session tag -> (close code, when): a socket of that session that joins soon after is closed too
        self.recent_session_ends: dict[str, tuple[int, float]] = {}
        self.unaudited: set[str] = set()  # users to ask the database about (again, if it was down)
        self.audits: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks
        self.audit_failures = FailureStreak(f"broadcast {group}: checking accounts for missed ends", log)

    async def join(
        self, key: object, send: Send, user: str | None = None, session: str | None = None
    ) -> None:
        """Add a socket; returns once the process is in the group (so no message is missed after this)."""
        self.sockets[key] = send
        if user is not None:
            self.users[key] = user
            self.sockets_of.setdefault(user, set()).add(key)
            if session is not None:
                self.sessions[key] = session
        if self.task is None or self.task.done():
            self.joined.clear()
            self.task = asyncio.get_running_loop().create_task(self._follow(), name=f"broadcast {self.group}")
        # Its handshake read the session before the sign-out committed, and joins after its end went by: no
        # audit would find it (they ask about accounts, not sessions). Checked before the wait for the
        # group too, which a handshake may give up on (a rejoin under way).
        if await self._end_if_session_ended(user, session):
            return
        await self.joined.wait()
        if user is not None and self._ended_lately(user):
            self.unaudited.add(user)
            self.audit()
        await self._end_if_session_ended(user, session)  # an end that came during the wait

    async def _end_if_session_ended(self, user: str | None, session: str | None) -> bool:
        ended = self.recent_session_ends.get(session) if session is not None else None
        if user is None or ended is None or not self._recent(ended[1]):
            return False
        await self.end(user, ended[0], session)
        return True

    def leave(self, key: object) -> None:
        self.sockets.pop(key, None)
        self.sessions.pop(key, None)
        user = self.users.pop(key, None)
        if user is not None:
            keys = self.sockets_of[user]
            keys.discard(key)
            if not keys:
                del self.sockets_of[user]

    async def end(self, user: str, code: int, session: str | None = None) -> int:
        """Close every socket of ``user`` (of its ``session`` only, if given) with ``code``; returns how
        many were closed."""
        keys = [
            k for k in self.sockets_of.get(user, ()) if session is None or self.sessions.get(k) == session
        ]
        # All leave first, before any close frame (no message goes after it) and before any await: a
        # socket that leaves while another's close waits is then no longer looked up.
        sends = [self.sockets[key] for key in keys]
        for key in keys:
            self.leave(key)
        for send in sends:
            # The server then tells the socket's consumer (websocket.disconnect), which cleans up as usual.
            with contextlib.suppress(Exception):  # gone already, or stuck: either way it is out
                async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                    await send({"type": "websocket.close", "code": code})
        return len(keys)

    def _ended_lately(self, user: str) -> bool:
        when = self.recent_ends.get(user)
        return when is not None and self._recent(when)

    @staticmethod
    def _recent(when: float) -> bool:
        return asyncio.get_running_loop().time() - when <= RECENT_END_SECONDS

    def _remember_end(self, end: End) -> None:
        now = asyncio.get_running_loop().time()
        for old in [u for u, when in self.recent_ends.items() if now - when > RECENT_END_SECONDS]:
            del self.recent_ends[old]
        for old in [
            t for t, (_, when) in self.recent_session_ends.items() if now - when > RECENT_END_SECONDS
        ]:
            del self.recent_session_ends[old]
        if end.session is None:
            self.recent_ends[end.user] = now
        else:
            self.recent_session_ends[end.session] = (end.code, now)

    def audit(self) -> None:
        """Ask the database, in the background, about the users in ``unaudited`` that still have sockets
        here, and end the sockets of those whose account ended; on failure they are asked again at the
        next rejoin round."""
        users = sorted(self.unaudited.intersection(self.sockets_of))
        self.unaudited.clear()
        if not users or self.ends is None or self.ends.audit is None:
            return
        task = asyncio.get_running_loop().create_task(self._audit(users), name=f"audit {self.group}")
        self.audits.add(task)
        task.add_done_callback(self.audits.discard)

    async def _audit(self, users: list[str]) -> None:
        assert self.ends is not None and self.ends.audit is not None
        try:
            ended = await self.ends.audit(users)
        except Exception as exc:  # the database down: the next rejoin round asks again
            self.unaudited.update(users)
            self.audit_failures.failed(exc)
            return
        self.audit_failures.succeeded()
        for user, code in ended.items():
            if await self.end(user, code):
                log.info(
                    "broadcast %s: closed the sockets of an account that ended unannounced here", self.group
                )

    async def _dispatch(self, message: dict[str, Any]) -> None:
        if self.ends is not None and message.get("type") in self.ends.types:
            ended = self.ends.read(message)
            if ended is not None:
                self._remember_end(ended)  # for a handshake under way, which may have missed it
                await self.end(ended.user, ended.code, ended.session)
            return
        try:
            frame = self.encode(message)
        except (KeyError, TypeError, ValueError):
            # Another kind of message on the process channel (a newer release's, in a rolling deploy):
            # dropped, not fanned out, and never the end of the loop that receives the ticks.
            log.debug("broadcast %s: dropped a %r message", self.group, message.get("type"))
            return
        await self.deliver(message, frame)

    async def _add(self, layer: Any, channel: str) -> None:
        """Put the process's channel in the group (and the ends group, if any): group_add is idempotent."""
        await layer.group_add(self.group, channel)
        if self.ends is not None:
            await layer.group_add(self.ends.group, channel)

    async def _follow(self) -> None:
        from channels.layers import get_channel_layer

        failures = 0
        channel: str | None = None
        owner: Any = None
        while True:
            layer = get_channel_layer()
            try:
                # One channel for as long as the layer lasts: a rejoin after a failure reuses it. A new one
                # each time left the old in the group, sent every message (into a dead Redis list, or a
                # pub/sub queue nobody reads) until group_expiry; a blip a minute made that many members.
                async with asyncio.timeout(JOIN_TIMEOUT_SECONDS):
                    if channel is None or layer is not owner:
                        channel, owner = await layer.new_channel(), layer
                    await self._add(layer, channel)
                self.joined.set()
                failures = 0
                self.unaudited.update(self.sockets_of)  # ends sent before this join never came here
                self.audit()
                refresh = asyncio.get_running_loop().create_task(self._stay_in_group(layer, channel))
                try:
                    while True:
                        await self._dispatch(await layer.receive(channel))
                finally:
                    refresh.cancel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: keep the sockets, rejoin when it is back
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.warning("broadcast %s: %s; rejoining in %s s", self.group, describe(exc), delay)
                self.joined.set()  # never hold a connecting page hostage to Redis
                await asyncio.sleep(delay)

    async def _stay_in_group(self, layer: Any, channel: str) -> None:
        # RedisChannelLayer forgets group members after group_expiry (a day by default), or with its data;
        # sockets come and go, but this membership lives as long as the process. A failure here leaves
        # receiving alone (it has its own retries): the next round tries again.
        from client_site.web.epochs import redis_epochs

        failing = FailureStreak(f"broadcast {self.group}: rejoining the group", log)
        epochs = redis_epochs()
        seen = epochs.losses
        while True:
            if epochs.losses == seen:  # a loss found during the last re-add is not waited past
                await epochs.next_loss(REJOIN_SECONDS)  # the usual round; Redis losing its data cuts it short
            seen = epochs.losses
            # Every round asks about every user with sockets here (one query per 500 users): an end can be
            # lost without Redis losing anything, its listener killed between commit and push, or cut off
            # from Redis alone; the user's own socket finds out from the replica (freshness.py), and a
            # clock-only page has nothing else to close it.
            self.unaudited.update(self.sockets_of)
            try:
                async with asyncio.timeout(JOIN_TIMEOUT_SECONDS):
                    await self._add(layer, channel)
            except Exception as exc:  # Redis down or stalled
                failing.failed(exc)
            else:
                failing.succeeded()
                self.audit()

    async def deliver(self, message: dict[str, Any], encoded: dict[str, Any] | None = None) -> int:
        """Write one message to every socket; returns how many took it.

        A healthy socket's send completes without suspending; it only waits when the socket's buffer is
        full (a client that stopped reading long ago). So one deadline, moved on every YIELD_EVERY sends,
        can only ever interrupt such a waiting send: that socket leaves the fan-out, the others go on,
        and no timer is paid per socket.
        """
        body = self.encode(message) if encoded is None else encoded
        frame = {"type": "websocket.send", "text": json.dumps(body)}
        targets = list(self.sockets.items())
        loop = asyncio.get_running_loop()
        delivered = index = 0
        waiting: object | None = None
        while index < len(targets):
            try:
                async with asyncio.timeout(SEND_TIMEOUT_SECONDS) as deadline:
                    while index < len(targets):
                        if index % YIELD_EVERY == 0:
                            deadline.reschedule(loop.time() + SEND_TIMEOUT_SECONDS)
                            await asyncio.sleep(0)  # let handshakes and other messages in between
                        key, send = targets[index]
                        index += 1
                        waiting = key
                        try:
                            await send(frame)
                            delivered += 1
                        except Exception:  # closed under us: its consumer cleans up on disconnect
                            self.leave(key)
                        waiting = None
            except TimeoutError:
                if waiting is not None:
                    self.leave(waiting)
                    waiting = None
                    log.info("broadcast %s: dropped a socket that stopped reading", self.group)
        return delivered


SERVER_SEND = "reactive.server_send"


def with_server_send(app: Any) -> Any:
    """Keep the server's own ``send`` in the scope, for the fan-out's frames.

    Channels' session middleware wraps ``send`` to save sessions on accept; on every other frame it only
    costs a few lazy-object lookups, which add up over thousands of sockets per tick.
    """

    async def middleware(scope: dict[str, Any], receive: Any, send: Send) -> Any:
        return await app({**scope, SERVER_SEND: send}, receive, send)

    return middleware


_broadcasts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, LocalBroadcast]] = (
    weakref.WeakKeyDictionary()
)


def broadcast(group: str, encode: Encode, ends: Ends | None = None) -> LocalBroadcast:
    """The broadcast of ``group`` for the running event loop (servers run one; tests run many)."""
    by_group = _broadcasts.setdefault(asyncio.get_running_loop(), {})
    if group not in by_group:
        by_group[group] = LocalBroadcast(group, encode, ends)
    return by_group[group]
