"""Websocket consumers: a user's personal room and the clock.

Both refuse by closing before ``accept()``: the handshake is answered 403, so nothing is ever sent to an
unauthenticated, disabled or foreign client. Each joins its group *before* reading the current state, so a
change committed in between is delivered too (the page's version check drops whichever copy is older).
A user socket that cannot join its group (Redis down or stalled) is refused the same way, after
JOIN_TIMEOUT_SECONDS at most: the page's reconnect backoff takes it from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import redis
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from client_site.web.broadcast import (
    JOIN_TIMEOUT_SECONDS,
    SEND_TIMEOUT_SECONDS,
    SERVER_SEND,
    End,
    Ends,
    LocalBroadcast,
    broadcast,
)
from client_site.web.epochs import RedisEpochs, redis_epochs
from client_site.web.freshness import freshness
from client_site.web.leavers import leavers
from client_site.web.profiles import ended_accounts, profile_by_pk
from reactive import clock, groups
from reactive.errors import FailureStreak, describe
from reactive.layers import ReceiveFailed

log = logging.getLogger("reactive.web")

HEARTBEAT_FRAME = {"type": "heartbeat"}  # the page's watchdog counts it; nothing else reads it

# Close codes the page understands (4000-4999 are for applications): both mean "never reconnect".
CLOSE_ACCOUNT_DISABLED = 4003
CLOSE_ACCOUNT_REMOVED = 4004
END_CODES = {groups.DISABLED: CLOSE_ACCOUNT_DISABLED, groups.REMOVED: CLOSE_ACCOUNT_REMOVED}
# The socket's session may be over (signed out, or its local account taken over by a replica, which makes
# its password unusable): not final, the page reconnects, and a refused handshake shows it signed out.
CLOSE_SESSION_CHANGED = 4001

# What a handshake waits for Redis at most, JOIN_TIMEOUT_SECONDS (the layer's socket_timeout is 30 s: a
# stalled Redis held a handshake that long, then answered 500).
# A pooled connection that Redis closed (a restart) fails once; a second try takes a fresh one.
RETRIED_ERRORS: tuple[type[BaseException], ...] = (redis.ConnectionError, ConnectionError)

# An open user socket re-adds itself to its group this often (plus or minus the jitter, so that the
# sockets of a reconnect wave spread out): Redis forgets members after group_expiry (a day), and some when
# it evicts keys. Each round is one ZADD; at 5,000 sockets a process, some 80 a second. When Redis lost
# its data or was out of reach (epochs.py) the sockets rejoin at once, spread over LOSS_SPREAD_SECONDS;
# then the process checks them against the replica (freshness.py) for a change pushed to no one.
MEMBERSHIP_REFRESH_SECONDS = 60.0
MEMBERSHIP_JITTER = 0.25
LOSS_SPREAD_SECONDS = 2.0
_membership_failures = FailureStreak("user sockets: keeping their group memberships", log)

# On the default layer, a socket's receive fails when Redis goes away (the pub/sub layer reconnects by
# itself and its sockets stay open). Such a socket closes with 1013 (try again later), logged once a
# streak, not with a traceback per socket: the page shows it is offline and reconnects with its backoff,
# and a handshake waits for Redis (JOIN_TIMEOUT_SECONDS), then sends the profile as it is by then. Its
# channel leaves the user's group once Redis answers (leavers.py).
CLOSE_TRY_AGAIN_LATER = 1013
_receive_failures = FailureStreak("user sockets: receiving from the channel layer", log)


def _refresh_delay() -> float:
    return MEMBERSHIP_REFRESH_SECONDS * random.uniform(1 - MEMBERSHIP_JITTER, 1 + MEMBERSHIP_JITTER)


async def _next_round(epochs: RedisEpochs, seen: int) -> int:
    """Wait for the next re-add: the usual delay, or a loss (then spread a little).

    ``seen`` is the count of losses already handled; the count now is returned, so a loss found between
    two waits is not missed either.
    """
    if epochs.losses == seen:
        await epochs.next_loss(_refresh_delay())
    if epochs.losses != seen:
        await asyncio.sleep(random.uniform(0, LOSS_SPREAD_SECONDS))  # a process's sockets do not read at once
    return epochs.losses


# Discards still running: the event loop keeps only a weak reference to a task.
_discards: set[asyncio.Task[None]] = set()


def _discard_in_background(layer: Any, group: str, channel: str) -> None:
    """Take a refused socket's channel out of the group its join failed on, without holding the refusal.

    Redis may have applied the join after all: it answered too late, or it took the ZADD and the connection
    broke before its answer came (or between channels-redis's ZADD and EXPIRE). The dead channel would then
    stay a member until group_expiry (a day), sent every change. When Redis is simply down, the discard
    fails too, with one debug line.
    """
    task = asyncio.get_running_loop().create_task(_discard(layer, group, channel), name=f"discard {group}")
    _discards.add(task)
    task.add_done_callback(_discards.discard)


async def _discard(layer: Any, group: str, channel: str) -> None:
    # Best effort, bounded like a join. At a stalled Redis the discard, sent after the join, is most likely
    # read after it too, even if its answer comes too late for us (Redis does not promise that order across
    # connections); when it fails outright, group_expiry still ends the membership.
    try:
        async with asyncio.timeout(JOIN_TIMEOUT_SECONDS):
            await layer.group_discard(group, channel)
    except Exception as exc:
        log.debug("could not discard %s from %s after a failed join: %s", channel, group, describe(exc))


def _authenticated_user(scope: dict[str, Any]) -> Any | None:
    # Django's default backend already signs out a disabled user; a backend that lets one in
    # (AllowAllUsersModelBackend) must still not open a socket: HTTP and sockets say the same.
    user = scope.get("user")
    if user is None or not user.is_authenticated or not getattr(user, "is_active", True):
        return None
    return user


def _session_tag(scope: dict[str, Any]) -> str | None:
    """groups.session_tag of the session the socket was opened in; None when it has none."""
    session_key = getattr(scope.get("session"), "session_key", None)
    return groups.session_tag(session_key) if session_key else None


def _final_code(profile: dict[str, Any]) -> int | None:
    """The close code a pushed profile ends the socket with, if any."""
    end = groups.account_end(profile)
    return None if end is None else END_CODES[end]


def _older_than(profile: dict[str, Any], sent: dict[str, Any] | None) -> bool:
    """Whether ``profile`` is an older version of the same master user than the one the socket sent."""
    if sent is None or profile.get("key") != sent.get("key"):
        return False
    version, shown = profile.get("version"), sent.get("version")
    return isinstance(version, int) and isinstance(shown, int) and version < shown


def removed_profile(last_sent: dict[str, Any] | None) -> dict[str, Any]:
    """What a socket sends for a user whose row is gone (the replica removed it, or the site's own admin
    deleted a local account) without a push telling the socket."""
    last = last_sent or {}
    return {"key": last.get("key", ""), "version": last.get("version", 0), "deleted": True}


def _read_end(message: dict[str, Any]) -> End | None:
    """Whose sockets a groups.ENDED_ACCOUNTS message closes (an account's end: all of them; a sign-out:
    its session's), and how; None for one this process cannot read."""
    user = message.get("user")
    if user is None:
        return None
    if message.get("type") == groups.SESSION_ENDED:
        session = message.get("session")
        return (
            End(str(user), CLOSE_SESSION_CHANGED, session) if isinstance(session, str) and session else None
        )
    code = END_CODES.get(message.get("end", ""))
    return None if code is None else End(str(user), code)


def ended_in_database(users: list[str]) -> dict[str, int]:
    """Of these local users (primary keys as text), those whose account ended, with the close code their
    user socket would get: gone (the replica deleted it) or disabled."""
    return {user: END_CODES[end] for user, end in ended_accounts(users).items()}


# A user's clock sockets close with the code their user socket closes with (see broadcast.py, Ends), and
# those of a session that signed out with CLOSE_SESSION_CHANGED, like its user sockets.
ACCOUNT_ENDS = Ends(
    groups.ENDED_ACCOUNTS,
    frozenset({groups.ACCOUNT_ENDED, groups.SESSION_ENDED}),
    _read_end,
    database_sync_to_async(ended_in_database),
)


class PushOnly(AsyncJsonWebsocketConsumer):
    """A socket only the server sends on. A page never sends a frame; what a client sends anyway (junk,
    bytes, a message dressed as a server event) is dropped unread: not decoded, not dispatched, no
    traceback, and the socket goes on."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **_: Any) -> None:
        log.debug("dropped a frame a client sent on %s", self.scope.get("path"))

    async def dispatch(self, message: dict[str, Any]) -> None:
        """A layer message of a type this process has no handler for is dropped, not raised: Channels ends
        the socket then (1011), and during a rolling deploy the newer processes send types (a sign-out's
        session.ended, say) that older ones do not know yet."""
        try:
            known = hasattr(self, get_handler_name(message))
        except ValueError:  # no type, or a private one ("_close")
            known = False
        if not known:
            log.debug(
                "dropped a %r message on %s: no handler here", message.get("type"), self.scope.get("path")
            )
            return
        await super().dispatch(message)


class UserConsumer(PushOnly):
    """The signed-in user's own room; sends the profile, then every committed change.

    ``/ws/<username>`` names the room, and must name the session's user. ``/ws/`` is the same room keyed
    on the session alone: the page uses it, since its path then holds no username that a rename could
    make stale, nor one ("." or "..") that a browser would resolve to another path.
    """

    group: str | None = None
    local_pk: str | None = None  # the user's, once the socket is open
    checked = False  # by freshness.py, while open
    accepted = closing = False
    sent: dict[str, Any] | None = None  # the last profile this socket was sent
    pushes = 0  # changes received from the group so far
    membership: asyncio.Task[None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ReceiveFailed as exc:  # Redis went away under the open socket
            _receive_failures.failed(exc.__cause__ or exc)
            self._stop_membership()  # no re-add may land after the leave
            if self.group is not None:  # no disconnect() will run: the channel leaves once Redis answers
                leavers().add(self.channel_layer, self.group, self.channel_name)
                self.group = None
            if self.accepted and not self.closing:
                with contextlib.suppress(Exception):  # the client may be gone already
                    await self.close(code=CLOSE_TRY_AGAIN_LATER)
        finally:  # however the consumer ends, its refresh ends with it and its channel leaves the group
            self._stop_membership()
            # A send to a client already gone (a page closed while its socket connects or takes a push)
            # raises out of the consumer, skipping disconnect(): the channel would stay in the user's
            # group until group_expiry (a day), sent every change.
            if self.group is not None:
                leavers().add(self.channel_layer, self.group, self.channel_name)
                self.group = None

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        self.closing = True
        await super().close(code=code, reason=reason)

    async def connect(self) -> None:
        user = _authenticated_user(self.scope)
        room = self.scope["url_route"]["kwargs"].get("username")
        if user is None or (room is not None and user.get_username() != room):
            await self.close()
            return
        group = groups.user_group(user.pk)
        if not await self._join(group):
            await self.close()
            return
        self.group, self.local_pk = group, str(user.pk)
        await self.accept()
        self.accepted = True
        _receive_failures.succeeded()  # it joined: Redis answers again
        # None: the row went since the session was read (a replica's removal pushed before the join)
        profile = await database_sync_to_async(profile_by_pk)(user.pk) or removed_profile(None)
        await self._send_profile(profile)
        if await self._end_if_final(profile):
            return
        self.membership = asyncio.get_running_loop().create_task(
            self._keep_membership(), name=f"membership {group}"
        )
        freshness().add(self.local_pk, self)
        self.checked = True

    async def _add_to(self, group: str) -> None:
        """group_add within JOIN_TIMEOUT_SECONDS, tried twice on a connection error (a pooled connection
        Redis closed when it restarted fails once; the second try takes a fresh one)."""
        async with asyncio.timeout(JOIN_TIMEOUT_SECONDS):
            try:
                await self.channel_layer.group_add(group, self.channel_name)
            except RETRIED_ERRORS:
                await self.channel_layer.group_add(group, self.channel_name)

    async def _join(self, group: str) -> bool:
        """Join the group on connect; False (logged) when Redis cannot take it."""
        try:
            await self._add_to(group)
        except Exception as exc:  # Redis down, stalled or refusing: a clean refusal, not a 500
            log.warning("user socket refused: cannot join %s: %s", group, describe(exc))
            _discard_in_background(self.channel_layer, group, self.channel_name)
            return False
        return True

    async def _keep_membership(self) -> None:
        """Re-add this socket to its group now and then, and at once after a loss (epochs.py: Redis lost
        its data or was out of reach)."""
        epochs = redis_epochs()
        seen = epochs.losses
        while True:
            seen = await _next_round(epochs, seen)
            group = self.group
            if group is None:
                return
            try:
                await self._add_to(group)
            except Exception as exc:  # Redis down: the socket stays; the next round retries
                _membership_failures.failed(exc)
            else:
                _membership_failures.succeeded()
                _receive_failures.succeeded()

    def shown(self) -> tuple[str, int]:
        """(key, version) of the last profile sent: what freshness.py compares with the replica."""
        sent = self.sent or {}
        version = sent.get("version", 0)
        return str(sent.get("key", "")), version if isinstance(version, int) else -1

    async def catch_up(self, profile: dict[str, Any] | None, pushes_then: int) -> None:
        """Send the profile read after ``pushes_then`` pushes (freshness.py found the page behind), unless a
        push came since (it is at least as new) or it is what was sent last; None: the user is gone."""
        if self.closing or self.pushes != pushes_then:
            return
        if profile is None:  # the replica deleted the user: the page says so, the socket ends
            profile = removed_profile(self.sent)
        if profile == self.sent:
            return
        try:
            if await self._end_if_taken_over(profile):
                return
            await self._send_profile(profile)
            await self._end_if_final(profile)
        except Exception as exc:  # the client went away meanwhile
            log.debug("user socket of user %s: catching up failed: %s", self.local_pk, describe(exc))

    async def heartbeat(self) -> None:
        """A frame that says nothing but that the connection works (freshness.py sends one a round)."""
        if self.closing:
            return
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):  # a page that stopped reading holds no pass
                await self.send_json(HEARTBEAT_FRAME)
        except Exception as exc:  # the client went away: its consumer cleans up on disconnect
            log.debug("user socket of user %s: heartbeat not sent: %s", self.local_pk, describe(exc))

    def _stop_membership(self) -> None:
        if self.checked and self.local_pk is not None:
            freshness().discard(self.local_pk, self)
            self.checked = False
        if self.membership is not None:
            if self.membership is not asyncio.current_task():
                self.membership.cancel()
            self.membership = None

    async def _leave(self, group: str) -> None:
        self.group = None
        try:
            async with asyncio.timeout(JOIN_TIMEOUT_SECONDS):
                await self.channel_layer.group_discard(group, self.channel_name)
        except Exception:  # Redis down or stalled: the channel leaves once Redis answers (leavers.py)
            leavers().add(self.channel_layer, group, self.channel_name)

    async def _send_profile(self, profile: dict[str, Any]) -> None:
        self.sent = profile
        await self.send_json({"type": "profile", "profile": profile})

    async def user_changed(self, event: dict[str, Any]) -> None:
        if self.closing:
            return
        profile = event.get("profile") or {}
        if _older_than(profile, self.sent):
            # Pushes can cross: a disable and its undo both pushed between the join and the profile read,
            # or two listeners of the client. The page ignores an older one; so does the socket, which
            # must not end over an outdated "disabled" either.
            return
        self.pushes += 1
        if await self._end_if_taken_over(profile):
            return
        self.sent = profile
        await self.send_json({"type": groups.USER_CHANGED, "profile": profile})
        await self._end_if_final(profile)

    async def session_ended(self, event: dict[str, Any]) -> None:
        """A sign-out of some session of this user (signouts.py): this socket ends if it was that one."""
        session = _session_tag(self.scope)
        if session is not None and event.get("session") == session:
            await self._end(CLOSE_SESSION_CHANGED)

    async def _end_if_taken_over(self, profile: dict[str, Any]) -> bool:
        """A local account's socket (no key) sent a replica's profile: the listener adopted the row for a
        master user and made its password unusable, which ends the session this socket was opened with.
        The other data is the master user's, not for that session: the socket ends instead."""
        if self.sent is None or self.sent.get("key") or not profile.get("key"):
            return False
        await self._end(CLOSE_SESSION_CHANGED)
        return True

    async def _end_if_final(self, profile: dict[str, Any]) -> bool:
        code = _final_code(profile)
        if code is None:
            return False
        await self._end(code)
        return True

    async def _end(self, code: int) -> None:
        if self.closing:
            return
        self.closing = True
        self._stop_membership()
        if self.group is not None:  # nothing more reaches this socket, even before the client's close frame
            await self._leave(self.group)
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        self._stop_membership()
        if self.group is not None:
            await self._leave(self.group)


def clock_frame(message: dict[str, Any]) -> dict[str, Any]:
    """The page's frame of a tick; ValueError for any other message (the fan-out drops it)."""
    if message.get("type") != groups.CLOCK_TICK:
        raise ValueError(f"not a clock tick: {message.get('type')!r}")
    frame = {"type": groups.CLOCK_TICK, "time": message["time"], "iso": message["iso"]}
    if isinstance(message.get("zone"), str):  # a beat of an earlier release sends none
        frame["zone"] = message["zone"]
    return frame


class ClockConsumer(PushOnly):
    """``/time/tic/``: signed-in users only; the current time at once, then every tick.

    The process is in the clock group once for all its clock sockets (see broadcast.py): a tick is one
    layer message per process, not one per socket. The fan-out knows each socket's user: when that account
    is disabled or removed, the socket closes with the code the user's own socket closes with.
    """

    # No channel of its own: the process's broadcast is the clock group's member (an alias Channels does
    # not know gives no layer). Thousands of clock sockets then cost the layer nothing: no per-socket
    # channel, receive task or pub/sub subscription.
    channel_layer_alias = "reactive.no-layer"
    fanout: LocalBroadcast | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:  # a send to a client gone mid-connect skips disconnect(): the socket leaves the fan-out here
            if self.fanout is not None:
                self.fanout.leave(self)

    async def connect(self) -> None:
        user = _authenticated_user(self.scope)
        if user is None:
            await self.close()
            return
        await self.accept()
        fanout = self.fanout = broadcast(groups.CLOCK, clock_frame, ACCOUNT_ENDS)
        send = self.scope.get(SERVER_SEND, self.base_send)
        try:  # a stalled Redis: the socket stays in the fan-out, whose join goes on without this page
            async with asyncio.timeout(JOIN_TIMEOUT_SECONDS):
                await fanout.join(self, send, user=str(user.pk), session=_session_tag(self.scope))
        except TimeoutError:
            pass
        current = clock.message(await clock.acurrent())
        if self in fanout.sockets:  # not if its account ended meanwhile: nothing is sent after the close
            await self.send_json(current)

    async def disconnect(self, code: int) -> None:
        if self.fanout is not None:
            self.fanout.leave(self)


class RefuseConsumer(AsyncJsonWebsocketConsumer):
    """Any other websocket path: refused (a 403 handshake, not a server error)."""

    channel_layer_alias = "reactive.no-layer"  # nothing to receive: no Redis call, no failure of one

    async def connect(self) -> None:
        await self.close()
