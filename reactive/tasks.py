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
