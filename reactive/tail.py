"""Following channel-layer groups from outside a site: what `reactive tail` shows.

Each group gets a channel of its own, so every message is known to come from its group. The tail joins
the groups on the site's own layer, so it receives exactly what browsers in those groups receive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reactive import groups, settings
from reactive.errors import ServiceUnavailable, UsageError, describe
from reactive.layers import ReceiveFailed

log = logging.getLogger("reactive.tail")
LEAVE_TIMEOUT_SECONDS = 2.0
# The memberships are re-added this often, as a page's socket re-adds its own: channels-redis forgets a
# member after group_expiry (a day), and a tail left running that long went silent without a word.
REJOIN_SECONDS = 60.0


@dataclass(frozen=True)
class Received:
    at: datetime
    group: str
    type: str
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(timespec="milliseconds"),
            "group": self.group,
            "type": self.type,
            "payload": self.payload,
        }


def check_groups(names: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(names))  # once each, in the order given
    for name in chosen:
        if not groups.is_valid_group(name):
            raise UsageError(f"invalid group name {name!r}: letters, digits, '_', '.', '-' (at most 99)")
    return chosen


def received(group: str, message: dict[str, Any]) -> Received:
    payload = {k: v for k, v in message.items() if k != "type"}
    return Received(datetime.now(UTC), group, str(message.get("type", "")), payload)


async def follow(
    names: Iterable[str],
    on_message: Callable[[Received], None],
    stop: asyncio.Event,
    layer: Any = None,
    on_joined: Callable[[list[str]], None] | None = None,
) -> int:
    """Join the groups and call ``on_message`` for each message until ``stop`` is set; leave them after.

    Returns how many messages arrived.
    """
    chosen = check_groups(names)
    layer = layer or groups.layer()
    channels: dict[str, str] = {}
    count = 0

    async def pump(channel: str, group: str) -> None:
        nonlocal count
        while True:
            message = await layer.receive(channel)
            count += 1
            on_message(received(group, message))

    async def stay_in_groups() -> None:
        while True:
            await asyncio.sleep(REJOIN_SECONDS)
            for channel, group in channels.items():
                try:
                    await layer.group_add(group, channel)
                except Exception as exc:  # Redis away: the receives report it; the next round tries again
                    log.debug("could not re-add %s to %s: %s", channel, group, describe(exc))

    try:
        for group in chosen:
            channel = await layer.new_channel()
            await layer.group_add(group, channel)
            channels[channel] = group
        if on_joined is not None:
            on_joined(chosen)
        pumps = [asyncio.create_task(pump(channel, group)) for channel, group in channels.items()]
        pumps.append(asyncio.create_task(stay_in_groups()))
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *pumps], return_when=asyncio.FIRST_COMPLETED)
        for task in [stopped, *pumps]:
            task.cancel()
        await asyncio.gather(stopped, *pumps, return_exceptions=True)
        failures = [task.exception() for task in done if task is not stopped]
        for failure in failures:
            if isinstance(failure, ReceiveFailed):  # Redis went away: one line for the operator, exit 3
                raise ServiceUnavailable(
                    f"lost Redis at {settings.shown_redis_url()}: {failure}"
                ) from failure
            if failure is not None:
                raise failure
    finally:
        await _leave(layer, channels)
    return count


async def _leave(layer: Any, channels: dict[str, str]) -> None:
    """Leave the groups, best effort and briefly: Ctrl-C must not wait out a stalled Redis (and a member
    left behind only costs the group until group_expiry)."""
    try:
        async with asyncio.timeout(LEAVE_TIMEOUT_SECONDS):
            for channel, group in channels.items():
                await layer.group_discard(group, channel)
    except Exception as exc:  # Redis gone or stalled: the memberships expire on their own
        log.debug("could not leave the groups (%s: %s); they expire on their own", type(exc).__name__, exc)
