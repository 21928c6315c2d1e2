"""Channel-layer group names and send helpers.

A user's personal group is named after the local primary key, not the username: every username
(``@.+-`` included, any length) maps to a valid group name, and the name survives renames.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from asgiref.sync import async_to_sync

log = logging.getLogger("reactive.groups")
CLOCK = "clock"
USER_CHANGED = "user.changed"
CLOCK_TICK = "clock.tick"
_VALID = re.compile(r"^[a-zA-Z0-9_.-]{1,99}$")


def user_group(local_pk: Any) -> str:
    return f"user.{local_pk}"


def is_valid_group(name: str) -> bool:
    return bool(_VALID.match(name))


def layer() -> Any:
    from channels.layers import get_channel_layer

    return get_channel_layer()


async def send(group: str, message: Mapping[str, Any]) -> None:
    await layer().group_send(group, dict(message))


def send_sync(group: str, message: Mapping[str, Any]) -> bool:
    """Send and report success; a channel layer that is down is logged, never raised (sync never blocks on it)."""
    try:
        async_to_sync(send)(group, message)
    except Exception as exc:  # channels-redis raises redis/OS errors of many kinds
        log.warning("could not notify group %s: %s: %s", group, type(exc).__name__, exc)
        return False
    return True


def notify_profiles(changes: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
    """Send each (local_pk, profile) to that user's personal group; return how many were sent."""
    sent = 0
    for local_pk, profile in changes:
        if not send_sync(user_group(local_pk), {"type": USER_CHANGED, "profile": dict(profile)}):
            break  # the layer is down: one warning per batch is enough
        sent += 1
    return sent
