"""Websocket consumers: a user's personal room and the clock.

Both refuse by closing before ``accept()``: the handshake is answered 403, so nothing is ever sent to an
unauthenticated, disabled or foreign client. Each joins its group *before* reading the current state, so a
change committed in between is delivered too (the page's version check drops whichever copy is older).
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from client_site.web.broadcast import SERVER_SEND, LocalBroadcast, broadcast
from client_site.web.profiles import profile_by_pk
from reactive import clock, groups

# Close codes the page understands (4000-4999 are for applications): both mean "never reconnect".
CLOSE_ACCOUNT_DISABLED = 4003
CLOSE_ACCOUNT_REMOVED = 4004


def _authenticated_user(scope: dict[str, Any]) -> Any | None:
    # Django's default backend already signs out a disabled user; a backend that lets one in
    # (AllowAllUsersModelBackend) must still not open a socket: HTTP and sockets say the same.
    user = scope.get("user")
    if user is None or not user.is_authenticated or not getattr(user, "is_active", True):
        return None
    return user


def _final_code(profile: dict[str, Any]) -> int | None:
    """The close code a pushed profile ends the socket with, if any."""
    if profile.get("deleted"):
        return CLOSE_ACCOUNT_REMOVED
    if profile.get("is_active") is False:
        return CLOSE_ACCOUNT_DISABLED
    return None


class UserConsumer(AsyncJsonWebsocketConsumer):
    """The signed-in user's own room; sends the profile, then every committed change.

    ``/ws/<username>`` names the room, and must name the session's user. ``/ws/`` is the same room keyed
    on the session alone: the page uses it, since its path then holds no username that a rename could
    make stale, nor one ("." or "..") that a browser would resolve to another path.
    """

    group: str | None = None

    async def connect(self) -> None:
        user = _authenticated_user(self.scope)
        room = self.scope["url_route"]["kwargs"].get("username")
        if user is None or (room is not None and user.get_username() != room):
            await self.close()
            return
        self.group = groups.user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        profile = await database_sync_to_async(profile_by_pk)(user.pk)
        if profile is not None:
            await self.send_json({"type": "profile", "profile": profile})
            await self._end_if_final(profile)

    async def user_changed(self, event: dict[str, Any]) -> None:
        profile = event.get("profile") or {}
        await self.send_json({"type": groups.USER_CHANGED, "profile": profile})
        await self._end_if_final(profile)

    async def _end_if_final(self, profile: dict[str, Any]) -> None:
        code = _final_code(profile)
        if code is None:
            return
        if self.group is not None:  # nothing more reaches this socket, even before the client's close frame
            await self.channel_layer.group_discard(self.group, self.channel_name)
            self.group = None
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)


def clock_frame(message: dict[str, Any]) -> dict[str, Any]:
    return {"type": groups.CLOCK_TICK, "time": message["time"], "iso": message["iso"]}


class ClockConsumer(AsyncJsonWebsocketConsumer):
    """``/time/tic/``: signed-in users only; the current time at once, then every tick.

    The process is in the clock group once for all its clock sockets (see broadcast.py): a tick is one
    layer message per process, not one per socket.
    """

    # No channel of its own: the process's broadcast is the clock group's member (an alias Channels does
    # not know gives no layer). Thousands of clock sockets then cost the layer nothing: no per-socket
    # channel, receive task or pub/sub subscription.
    channel_layer_alias = "reactive.no-layer"
    fanout: LocalBroadcast | None = None

    async def connect(self) -> None:
        if _authenticated_user(self.scope) is None:
            await self.close()
            return
        await self.accept()
        self.fanout = broadcast(groups.CLOCK, clock_frame)
        await self.fanout.join(self, self.scope.get(SERVER_SEND, self.base_send))
        await self.send_json(clock.message(await clock.acurrent()))

    async def disconnect(self, code: int) -> None:
        if self.fanout is not None:
            self.fanout.leave(self)


class RefuseConsumer(AsyncJsonWebsocketConsumer):
    """Any other websocket path: refused (a 403 handshake, not a server error)."""

    async def connect(self) -> None:
        await self.close()
