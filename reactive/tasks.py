"""Celery tasks of the core: the outbox relay and sweep (master), the clock tick (clients)."""

from __future__ import annotations

import logging

from celery import shared_task

log = logging.getLogger("reactive.tasks")


@shared_task(name="reactive.relay_outbox", ignore_result=True)
def relay_outbox() -> int:
    from reactive.outbox import relay_pending
    from reactive.transport import get_transport

    return relay_pending(get_transport()).sent


@shared_task(name="reactive.sweep_outbox", ignore_result=True)
def sweep_outbox() -> int:
    """Retry rows left pending (SNS or broker down, worker killed) and prune old sent rows."""
    from reactive.outbox import prune_sent, relay_pending
    from reactive.transport import get_transport

    sent = 0
    while True:
        result = relay_pending(get_transport())
        sent += result.sent
        if result.sent == 0 or result.failed:
            break
    pruned = prune_sent()
    if sent or pruned:
        log.info("sweep: relayed %d, pruned %d", sent, pruned)
    return sent


@shared_task(name="reactive.clock_tick", ignore_result=True)
def clock_tick() -> str:
    """Store the time in Redis and send it to the clock group (client sites; beat sends one every 0.5 s).

    The beat entry carries ``expires``: a tick queued while the workers were down is dropped, not
    replayed late (a late time is worse than a missing one).
    """
    from reactive import clock

    return clock.tick()["time"]
