"""Celery tasks of the core: the outbox relay and sweep (master), the clock tick (clients)."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from celery import shared_task

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
    from reactive import outbox, settings
    from reactive.transport import get_transport

    aliases = outbox.databases()  # where capture writes rows: each tracked model's database
    budget = max(1.0, settings.float_setting("REACTIVE_SWEEP_INTERVAL", 5.0))
    sent = pruned = 0
    transport = get_transport()
    for using in aliases:  # each its share: a busy one must not starve a quiet one's retries
        try:
            pruned += outbox.prune_sent(using=using)
            sent += _relay_for(transport, using, seconds=budget / len(aliases))
        except Exception as exc:  # one database down must not stop the sweep of the others
            _sweep_failed(using, exc)
        else:
            _sweep_worked(using)
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


_failing_databases: set[str] = set()  # said once when a database's sweep starts failing, once when it works


def _sweep_failed(using: str, exc: Exception) -> None:
    from django.db import DatabaseError

    if using in _failing_databases:
        log.debug("sweep: database %s still failing: %s", using, exc)
        return
    _failing_databases.add(using)
    if isinstance(exc, DatabaseError):
        log.warning("sweep: database %s: %s; the other databases are swept, this one next time", using, exc)
    else:
        log.exception("sweep: database %s failed; the other databases are swept, this one next time", using)


def _sweep_worked(using: str) -> None:
    if using in _failing_databases:
        _failing_databases.discard(using)
        log.info("sweep: database %s works again", using)


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
