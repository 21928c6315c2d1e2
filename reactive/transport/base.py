"""The small typed interface every transport implements. Policy (retry, dead letters, replay) lives in core."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

BATCH_LIMIT = 10  # SNS PublishBatch and SQS SendMessageBatch/DeleteMessageBatch take at most 10 entries
# SNS takes at most 256 KiB a message and a PublishBatch in all (body and message attributes); SQS's batches
# take the same.
MAX_BATCH_BYTES = 256 * 1024


@dataclass(frozen=True)
class OutgoingMessage:
    id: str  # unique within one batch call
    body: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    group_id: str | None = None  # FIFO only
    dedup_id: str | None = None  # FIFO only
    # SQS MessageAttributes exactly as received ({"DataType": ..., "StringValue"|"BinaryValue": ...}); when set,
    # they are sent instead of ``attributes`` so that a replay keeps Number/Binary/custom data types.
    raw_attributes: Mapping[str, Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    body: str
    receipt: str
    attributes: Mapping[str, str] = field(default_factory=dict)  # SentTimestamp, ApproximateReceiveCount, ...
    message_attributes: Mapping[str, str] = field(default_factory=dict)
    raw_message_attributes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # with DataType

    @property
    def group_id(self) -> str | None:
        return self.attributes.get("MessageGroupId") or None  # FIFO queues only

    @property
    def sent_timestamp(self) -> int | None:
        value = self.attributes.get("SentTimestamp")
        return int(value) if value else None

    @property
    def receive_count(self) -> int:
        return int(self.attributes.get("ApproximateReceiveCount", "0") or 0)


@dataclass(frozen=True)
class BatchResult:
    """Which entries of one batch call succeeded, by OutgoingMessage.id (or receipt for deletes)."""

    succeeded: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)  # id -> reason
    message_ids: Mapping[str, str] = field(default_factory=dict)  # id -> the message id SQS gave it (send)


@dataclass(frozen=True)
class QueueDepth:
    visible: int
    in_flight: int
    delayed: int = 0


class Transport(Protocol):
    def publish(self, messages: Sequence[OutgoingMessage]) -> BatchResult:
        """Publish to the topic (fan-out to every subscribed client)."""
        ...

    def send(self, queue: str, messages: Sequence[OutgoingMessage]) -> BatchResult:
        """Send straight to one queue (resync, replay)."""
        ...

    def receive(
        self,
        queue: str,
        *,
        max_messages: int = 10,
        wait_seconds: float = 20,
        visibility_timeout: int | None = None,
        lean: bool = False,
    ) -> list[ReceivedMessage]:
        """Up to ``max_messages``; ``lean`` asks only for what the listener reads (the body, SentTimestamp,
        ApproximateReceiveCount), not the message attributes that the DLQ tools show and replay."""
        ...

    def delete(self, queue: str, receipts: Sequence[str]) -> BatchResult: ...

    def release(self, queue: str, receipts: Sequence[str]) -> None:
        """Make messages visible again at once (peek without consuming)."""
        ...

    def depth(self, queue: str) -> QueueDepth: ...

    def visibility_timeout(self, queue: str) -> float:
        """Seconds a received message stays hidden; raises ResourceNotFound for a missing queue."""
        ...

    def purge(self, queue: str) -> None: ...


def chunks(items: Sequence, size: int = BATCH_LIMIT) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def message_size(message: OutgoingMessage) -> int:
    """Bytes SNS and SQS count against their limits: the body, and each attribute's name, type and value."""
    attributes = message.raw_attributes or {
        name: {"DataType": "String", "StringValue": str(value)} for name, value in message.attributes.items()
    }
    size = len(message.body.encode())
    for name, attribute in attributes.items():
        size += len(name.encode()) + len(str(attribute.get("DataType", "")).encode())
        value = attribute.get("StringValue", attribute.get("BinaryValue", ""))
        size += len(value) if isinstance(value, bytes) else len(str(value).encode())
    return size


def packed(messages: Sequence[OutgoingMessage]) -> tuple[list[list[OutgoingMessage]], list[OutgoingMessage]]:
    """Batches of at most BATCH_LIMIT messages and MAX_BATCH_BYTES in all, in order; and the messages that
    exceed MAX_BATCH_BYTES on their own, which no call can carry.
    """
    batches: list[list[OutgoingMessage]] = []
    too_big: list[OutgoingMessage] = []
    current: list[OutgoingMessage] = []
    current_bytes = 0
    for message in messages:
        size = message_size(message)
        if size > MAX_BATCH_BYTES:
            too_big.append(message)
            continue
        if current and (len(current) == BATCH_LIMIT or current_bytes + size > MAX_BATCH_BYTES):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(message)
        current_bytes += size
    if current:
        batches.append(current)
    return batches, too_big


def too_big_reason(message: OutgoingMessage) -> str:
    return (
        f"MessageTooLong: {message_size(message)} bytes with its attributes, over the {MAX_BATCH_BYTES}-byte "
        "limit of SNS and SQS; it cannot be sent"
    )
