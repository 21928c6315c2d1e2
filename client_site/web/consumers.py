"""Websocket consumers: a user's personal room and the clock.

Both refuse by closing before ``accept()``: the handshake is answered 403, so nothing is ever sent to an
unauthenticated or foreign client. Each joins its group *before* reading the current state, so a change
committed in between is delivered too (the page's version check drops whichever copy is older).
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from client_site.web.broadcast import SERVER_SEND, LocalBroadcast, broadcast
from client_site.web.profiles import profile_by_pk
from reactive import clock, groups

# Close codes the page understands (4000-4999 are for applications).
CLOSE_ACCOUNT_REMOVED = 4004


def _authenticated_user(scope: dict[str, Any]) -> Any | None:
    user = scope.get("user")
    return user if user is not None and user.is_authenticated else None


class UserConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/<username>``: the signed-in user's own room; sends the profile, then every committed change."""

    group: str | None = None

    async def connect(self) -> None:
        user = _authenticated_user(self.scope)
        room = self.scope["url_route"]["kwargs"]["username"]
        if user is None or user.get_username() != room:
            await self.close()
            return
        self.group = groups.user_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        profile = await database_sync_to_async(profile_by_pk)(user.pk)
        if profile is not None:
            await self.send_json({"type": "profile", "profile": profile})

    async def user_changed(self, event: dict[str, Any]) -> None:
        profile = event.get("profile") or {}
        await self.send_json({"type": groups.USER_CHANGED, "profile": profile})
        if profile.get("deleted"):
            await self.close(code=CLOSE_ACCOUNT_REMOVED)

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
