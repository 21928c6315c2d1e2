"""Channel-layer group names and send helpers.

A user's personal group is named after the local primary key, not the username: every username
(``@.+-`` included, any length) maps to a valid group name, and the name survives renames.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger("reactive.groups")
SEND_TIMEOUT_SECONDS = 5.0  # a layer that hangs must not hold the listener: the notification is dropped
CLOCK = "clock"
USER_CHANGED = "user.changed"
CLOCK_TICK = "clock.tick"
# An account that ended (disabled or removed) is also announced to every web process, once: a process's
# clock sockets share one channel (client_site/web/broadcast.py), so the user's group cannot reach them.
ENDED_ACCOUNTS = "accounts.ended"
ACCOUNT_ENDED = "account.ended"
# A browser session signed out (or its account taken over): that session's sockets close, the others stay.
SESSION_ENDED = "session.ended"
DISABLED = "disabled"
REMOVED = "removed"
_VALID = re.compile(r"[a-zA-Z0-9_.-]{1,99}")  # whole name: fullmatch (a "$" would let "clock\n" through)


def user_group(local_pk: Any) -> str:
    return f"user.{local_pk}"


def account_end(profile: Mapping[str, Any]) -> str | None:
    """REMOVED or DISABLED when this profile ends the account's sockets; None otherwise."""
    if profile.get("deleted"):
        return REMOVED
    if profile.get("is_active") is False:
        return DISABLED
    return None


def is_valid_group(name: str) -> bool:
    return bool(_VALID.fullmatch(name))


def layer() -> Any:
    from channels.layers import get_channel_layer

    return get_channel_layer()


async def send(group: str, message: Mapping[str, Any]) -> None:
    await layer().group_send(group, dict(message))


class _Loop:
    """One event loop in a daemon thread, for the group sends of a synchronous process (the listener).

    async_to_sync would run every send on a loop of its own, and channels-redis keeps its connections per
    loop: each notification would open a new Redis connection. This loop keeps them open.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="reactive-groups", daemon=True).start()

    def run(self, coroutine: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(SEND_TIMEOUT_SECONDS)
        finally:
            future.cancel()  # after a timeout: stop waiting on the layer (a no-op once done)


_loop: _Loop | None = None
_loop_lock = threading.Lock()


def _sending_loop() -> _Loop:
    global _loop
    with _loop_lock:
        if _loop is None or _loop.pid != os.getpid():  # a forked child (Celery's prefork) has no such thread
            _loop = _Loop()
        return _loop


def run_sync(coroutine: Any) -> Any:
    """Run a coroutine on the process's sending loop, whose Redis connections stay open; its errors, or
    TimeoutError after SEND_TIMEOUT_SECONDS, are raised here."""
    return _sending_loop().run(coroutine)


def send_sync(group: str, message: Mapping[str, Any]) -> bool:
    """Send and report success; a channel layer that is down is logged, never raised (sync never blocks on it)."""
    try:
        run_sync(send(group, message))
    except Exception as exc:  # channels-redis raises redis/OS errors of many kinds; a hang times out
        log.warning("could not notify group %s: %s: %s", group, type(exc).__name__, exc)
        return False
    return True


def notify_profiles(changes: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
    """Send each (local_pk, profile) to that user's personal group, and an account's end to ENDED_ACCOUNTS
    too; return how many were sent whole, in order (the rest were not, or not all of their messages)."""
    sent = 0
    for local_pk, profile in changes:
        if not send_sync(user_group(local_pk), {"type": USER_CHANGED, "profile": dict(profile)}):
            break  # the layer is down: one warning per batch is enough
        end = account_end(profile)
        if end is not None and not send_sync(ENDED_ACCOUNTS, ended_message(local_pk, end)):
            break  # not counted: sent again, the profile is harmless twice and the end goes out
        sent += 1
    return sent


def ended_message(local_pk: Any, end: str) -> dict[str, Any]:
    """What ENDED_ACCOUNTS carries: whose account ended, and how (DISABLED or REMOVED); no profile data."""
    return {"type": ACCOUNT_ENDED, "user": str(local_pk), "end": end}


def session_tag(session_key: str) -> str:
    """How a session is named in a layer message: a digest, since the key itself signs its browser in."""
    return hashlib.sha256(session_key.encode()).hexdigest()


def session_ended_message(local_pk: Any, session_key: str) -> dict[str, Any]:
    """What the user's group (their user sockets) and ENDED_ACCOUNTS (their clock sockets) carry when one
    of their sessions signs out."""
    return {"type": SESSION_ENDED, "user": str(local_pk), "session": session_tag(session_key)}
