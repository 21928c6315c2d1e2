"""Transports: chosen from settings, loaded on first use and cached (never at import time)."""

from __future__ import annotations

import functools

from reactive.transport.base import BatchResult, OutgoingMessage, QueueDepth, ReceivedMessage, Transport

__all__ = ["BatchResult", "OutgoingMessage", "QueueDepth", "ReceivedMessage", "Transport", "get_transport"]


@functools.cache
def get_transport() -> Transport:
    """REACTIVE_TRANSPORT=sqs (default) or memory."""
    from reactive import settings

    if settings.transport_kind() == "memory":
        from reactive.transport.memory import MemoryTransport

        return MemoryTransport.shared()
    from reactive.transport.sqs import SqsTransport

    return SqsTransport.from_settings()
