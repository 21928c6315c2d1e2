"""Celery tasks of the core: the outbox relay and sweep (master), the clock tick (clients)."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from celery import shared_task

from reactive.errors import FailureStreak
from reactive.heartbeat import Heartbeat

log = logging.getLogger("reactive.tasks")


@shared_task(name="reactive.relay_outbox", ignore_result=True)
def relay_outbox(using: str = "default") -> int:
    """Publish the due rows of the database a commit wrote them to."""
    from reactive.outbox import relay_pending
    from reactive.transport import get_transport

    return relay_pending(get_transport(), using=using).sent


@shared_task(name="reactive.sweep_outbox", ignore_result=True)
def sweep_outbox() -> int:
    """Prune old sent rows, then retry rows left pending (SNS or broker down, worker killed).

    Relays until a run sends nothing, one fails, or a sweep interval has gone by: under steady load
    there is always something to send, and the next sweep (or the relay each commit asks for) goes on.
    """
    from django.db import DatabaseError

    from reactive import outbox, settings
    from reactive.transport import get_transport

    aliases = outbox.databases()  # where capture writes rows: each tracked model's database
    budget = settings.sweep_interval()
    sent = pruned = 0
    transport = get_transport()
    for using in aliases:  # each its share: a busy one must not starve a quiet one's retries
        streak = _sweep_streaks.setdefault(using, FailureStreak(f"sweep: database {using}", log))
        try:
            pruned += outbox.prune_sent(using=using)
            sent += _relay_for(transport, using, seconds=budget / len(aliases))
        except DatabaseError as exc:  # one database down must not stop the sweep of the others
            streak.failed(exc)
        else:
            streak.succeeded()
    if sent or pruned:
        log.info("sweep: relayed %d, pruned %d", sent, pruned)
    return sent


def _relay_for(transport: Any, using: str, seconds: float) -> int:
    from reactive import outbox

    sent, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = outbox.relay_pending(transport, using=using)
        sent += result.sent
        if result.sent == 0 or result.failed:
            break
    return sent


_sweep_streaks: dict[str, FailureStreak] = {}  # per database: its failure said once, then its recovery


@shared_task(name="reactive.clock_tick", ignore_result=True)
def clock_tick() -> str:
    """Store the time in Redis and send it to the clock group (client sites; beat sends one every 0.5 s).

    The beat entry carries ``expires``: a tick queued while the workers were down is dropped, not
    replayed late (a late time is worse than a missing one).
    """
    from reactive import clock

    _clock_heartbeat().beat()  # the schedule reached a worker: beat and worker both go round
    return clock.tick()["time"]


@functools.cache
def _clock_heartbeat() -> Heartbeat:
    """REACTIVE_HEARTBEAT_FILE for a Celery clock (compose's worker with embedded beat), as `reactive beat`
    touches it: when beat stops scheduling or the worker stops taking ticks, the file goes stale."""
    return Heartbeat.configured()
