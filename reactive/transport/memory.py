"""An in-process transport with SQS semantics (visibility timeout, receive count, redrive), for fast tests."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from reactive.errors import ResourceNotFound, TransportError
from reactive.transport.base import (
    BATCH_LIMIT,
    MAX_BATCH_BYTES,
    BatchResult,
    OutgoingMessage,
    QueueDepth,
    ReceivedMessage,
    message_size,
    too_big_reason,
)


@dataclass
class _Stored:
    message_id: str
    body: str
    attributes: dict[str, str]
    sent_ms: int
    receive_count: int = 0
    visible_at: float = 0.0
    receipt: str = ""


@dataclass
class _Queue:
    name: str
    visibility_timeout: float = 30.0
    dlq: str | None = None
    max_receives: int = 5
    messages: list[_Stored] = field(default_factory=list)


class MemoryTransport:
    """Thread-safe; ``subscribe`` wires a queue to the topic like an SNS subscription with raw delivery."""

    _shared: ClassVar[MemoryTransport | None] = None

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        self._subscribers: list[str] = []
        self._lock = threading.Condition()
        self._receipts = itertools.count(1)
        self.calls: list[str] = []

    @classmethod
    def shared(cls) -> MemoryTransport:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def create_queue(
        self, name: str, *, dlq: str | None = None, max_receives: int = 5, visibility_timeout: float = 30.0
    ) -> None:
        with self._lock:
            self._queues.setdefault(name, _Queue(name, visibility_timeout, dlq, max_receives))

    def subscribe(self, queue: str) -> None:
        with self._lock:
            if queue not in self._subscribers:
                self._subscribers.append(queue)

    def publish(self, messages: Sequence[OutgoingMessage]) -> BatchResult:
        fits, refused = _check_batch(messages)
        self.calls.append("publish")
        with self._lock:
            for queue in self._subscribers:
                self._append(queue, fits)
            self._lock.notify_all()
        return BatchResult(succeeded=tuple(m.id for m in fits), failed=refused)

    def send(self, queue: str, messages: Sequence[OutgoingMessage]) -> BatchResult:
        fits, refused = _check_batch(messages)
        self.calls.append("send")
        with self._lock:
            ids = self._append(queue, fits)
            self._lock.notify_all()
        return BatchResult(
            succeeded=tuple(m.id for m in fits),
            failed=refused,
            message_ids=dict(zip([m.id for m in fits], ids, strict=True)),
        )

    def receive(
        self,
        queue: str,
        *,
        max_messages: int = 10,
        wait_seconds: float = 20,
        visibility_timeout: int | None = None,
        lean: bool = False,
    ) -> list[ReceivedMessage]:
        self.calls.append("receive")
        deadline = time.monotonic() + wait_seconds
        with self._lock:
            while True:
                got = self._take(self._queue(queue), max_messages, visibility_timeout)
                remaining = deadline - time.monotonic()
                if got or remaining <= 0:
                    return got
                self._lock.wait(min(remaining, 0.05))

    def delete(self, queue: str, receipts: Sequence[str]) -> BatchResult:
        self.calls.append("delete")
        with self._lock:
            q = self._queue(queue)
            wanted = set(receipts)
            found = {m.receipt for m in q.messages if m.receipt in wanted}
            q.messages = [m for m in q.messages if m.receipt not in wanted]
        return BatchResult(succeeded=tuple(found), failed={r: "unknown receipt" for r in wanted - found})

    def release(self, queue: str, receipts: Sequence[str]) -> None:
        with self._lock:
            for m in self._queue(queue).messages:
                if m.receipt in receipts:
                    m.visible_at = 0.0
            self._lock.notify_all()

    def depth(self, queue: str) -> QueueDepth:
        now = time.monotonic()
        with self._lock:
            msgs = self._queue(queue).messages
            visible = sum(1 for m in msgs if m.visible_at <= now)
            return QueueDepth(visible=visible, in_flight=len(msgs) - visible)

    def visibility_timeout(self, queue: str) -> float:
        with self._lock:
            return self._queue(queue).visibility_timeout

    def purge(self, queue: str) -> None:
        with self._lock:
            self._queue(queue).messages.clear()

    def _append(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        q = self._queue(queue)
        now_ms = int(time.time() * 1000)
        stored = [_Stored(str(uuid.uuid4()), m.body, dict(m.attributes), now_ms) for m in messages]
        q.messages.extend(stored)
        return [m.message_id for m in stored]

    def _take(self, q: _Queue, limit: int, visibility: int | None) -> list[ReceivedMessage]:
        now = time.monotonic()
        taken: list[ReceivedMessage] = []
        for m in list(q.messages):
            if len(taken) >= limit:
                break
            if m.visible_at > now:
                continue
            if q.dlq and m.receive_count >= q.max_receives:
                q.messages.remove(m)
                self._queue(q.dlq).messages.append(m)
                m.visible_at = 0.0
                continue
            m.receive_count += 1
            m.visible_at = now + (q.visibility_timeout if visibility is None else visibility)
            m.receipt = f"r{next(self._receipts)}"
            taken.append(
                ReceivedMessage(
                    message_id=m.message_id,
                    body=m.body,
                    receipt=m.receipt,
                    attributes={
                        "SentTimestamp": str(m.sent_ms),
                        "ApproximateReceiveCount": str(m.receive_count),
                    },
                    message_attributes=dict(m.attributes),
                )
            )
        return taken

    def _queue(self, name: str) -> _Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise ResourceNotFound(f"queue {name} does not exist") from None


def _check_batch(messages: Sequence[OutgoingMessage]) -> tuple[list[OutgoingMessage], dict[str, str]]:
    """As SqsTransport does: a message too big for any call is refused on its own; a call that would carry
    too many entries or bytes in all is refused as a whole (the caller should have packed it)."""
    if len(messages) > BATCH_LIMIT:
        raise TransportError(f"TooManyEntriesInBatchRequest: {len(messages)} entries (at most {BATCH_LIMIT})")
    fits = [m for m in messages if message_size(m) <= MAX_BATCH_BYTES]
    size = sum(message_size(m) for m in fits)
    if size > MAX_BATCH_BYTES:
        raise TransportError(f"BatchRequestTooLong: {size} bytes (at most {MAX_BATCH_BYTES})")
    return fits, {m.id: too_big_reason(m) for m in messages if m not in fits}
