"""Dead letters: inspect without consuming, explain, replay to the client's queue, purge.

Inspecting receives with a visibility timeout (so that one look sees each message once) and then
releases every receipt at once (ChangeMessageVisibility 0): the messages stay in the DLQ, visible.

Replaying sends a batch to the client's queue first and deletes from the DLQ only the entries whose
send succeeded. Interrupted at any point, nothing is lost: a message is in the DLQ, in the queue, or
(at worst, between the send and the delete) in both; applying is idempotent, so a duplicate is harmless.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reactive import settings
from reactive.errors import MessageError, ReactiveError, ResourceNotFound, TransportError, UsageError
from reactive.events import Event, decode, format_time
from reactive.transport.base import OutgoingMessage, QueueDepth, ReceivedMessage, Transport

PEEK_VISIBILITY = 30  # seconds a looked-at message stays hidden if this process dies before releasing it
REPLAY_VISIBILITY = 60  # seconds a message in hand stays hidden while it is sent and deleted
# Receives in a row that bring only messages this replay has handled (they reappear once REPLAY_VISIBILITY
# has passed) before it stops: what is left is what it sent and the listener refused again.
GIVE_UP_AFTER_RECEIVES = 3
MOVE_TASK_MAX_RATE = 500  # StartMessageMoveTask's MaxNumberOfMessagesPerSecond
POLL_SECONDS = 1  # a short long-poll: it asks every SQS server (a 0 s poll samples some), and returns at once
DEFAULT_MOVER = "SendMessageBatch + DeleteMessageBatch (replay-dlq without --move-task)"
Progress = Callable[[int], None]


@dataclass(frozen=True)
class ClientQueues:
    client: str
    queue: str
    dlq: str


def queues_of(transport: Transport, client: str) -> ClientQueues:
    """The client's queue and DLQ names, checked to exist, with a clear message for a wrong client name."""
    settings.validate_client(client)
    names = settings.names()
    found = ClientQueues(client, names.queue(client), names.dlq(client))
    for queue in (found.dlq, found.queue):
        try:
            transport.depth(queue)
        except ResourceNotFound as exc:
            known = ", ".join(settings.clients())
            raise ResourceNotFound(
                f"no queue {queue} for client {client!r}: is the name right (REACTIVE_CLIENTS: {known})? "
                f"If it is new, run `reactive provision --client {client}`"
            ) from exc
    return found


# -- what a dead letter says -------------------------------------------------------------------------
@dataclass(frozen=True)
class DeadLetter:
    """One message in a DLQ, decoded when it can be, with the reason when it cannot."""

    message: ReceivedMessage
    event: Event | None
    error: str | None  # why the body does not decode
    diagnosis: str | None = None  # what applying it to the replica says now (``diagnose``)

    @classmethod
    def of(cls, message: ReceivedMessage) -> DeadLetter:
        try:
            return cls(message, decode(message.body, sent_timestamp=message.sent_timestamp), None)
        except MessageError as exc:
            return cls(message, None, str(exc))

    @property
    def message_id(self) -> str:
        return self.message.message_id

    @property
    def sent_at(self) -> datetime | None:
        stamp = self.message.sent_timestamp
        return datetime.fromtimestamp(stamp / 1000, UTC) if stamp else None

    @property
    def why(self) -> str:
        if self.error:
            return f"not decodable: {self.error}"
        if self.diagnosis:
            return self.diagnosis
        return "decodes; refused when applied (the listener's log, or --diagnose, says why)"

    def to_dict(self) -> dict[str, Any]:
        event = self.event
        return {
            "message_id": self.message_id,
            "sent_at": format_time(self.sent_at) if self.sent_at else None,
            "receive_count": self.message.receive_count,
            "group_id": self.message.group_id,
            "body": self.message.body,
            "message_attributes": json_attributes(self.message.raw_message_attributes),
            "decodes": event is not None,
            "action": event.action if event else None,
            "key": event.key if event else None,
            "version": event.version if event else None,
            "model": event.model if event else None,
            "error": self.error,
            "diagnosis": self.diagnosis,
            "why": self.why,
        }


def json_attributes(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Message attributes for JSON output: binary values in base64."""
    shown: dict[str, dict[str, str]] = {}
    for name, value in raw.items():
        item = {"DataType": str(value.get("DataType", "String"))}
        if "BinaryValue" in value:
            item["BinaryValue"] = base64.b64encode(bytes(value["BinaryValue"])).decode("ascii")
        else:
            item["StringValue"] = str(value.get("StringValue", ""))
        shown[name] = item
    return shown


def pretty_body(body: str) -> str:
    """The body indented when it is JSON (an SNS envelope's Message too), as it is otherwise."""
    try:
        payload = json.loads(body)
        if isinstance(payload, dict) and isinstance(payload.get("Message"), str):
            with contextlib.suppress(ValueError):
                payload = {**payload, "Message": json.loads(payload["Message"])}
        return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes: shown as it is
        return body


# -- looking without consuming -----------------------------------------------------------------------
def peek(transport: Transport, queue: str, *, limit: int = 100) -> list[ReceivedMessage]:
    """Up to ``limit`` messages of a queue, released at once so that they stay there, visible.

    It stops at ``limit`` or at a receive that brings nothing new, not at the depth the queue reports:
    on AWS that count is approximate and lags (up to a minute), and a DLQ said to be empty may not be.
    """
    seen: dict[str, ReceivedMessage] = {}
    receipts: list[str] = []
    wanted = limit
    try:
        while len(seen) < wanted:
            batch = _receive(transport, queue, min(10, wanted - len(seen)), PEEK_VISIBILITY)
            receipts += [m.receipt for m in batch]
            fresh = [m for m in batch if m.message_id not in seen]
            if not fresh:
                break
            seen.update((m.message_id, m) for m in fresh)
    finally:
        if receipts:
            transport.release(queue, receipts)
    return list(seen.values())[:limit]


def _receive(transport: Transport, queue: str, count: int, visibility: int) -> list[ReceivedMessage]:
    wait = POLL_SECONDS
    return transport.receive(queue, max_messages=count, wait_seconds=wait, visibility_timeout=visibility)


def inspect(transport: Transport, queues: ClientQueues, *, limit: int = 100) -> list[DeadLetter]:
    return [DeadLetter.of(m) for m in peek(transport, queues.dlq, limit=limit)]


SHORT_ID_LENGTH = 8  # as git shortens hashes: enough to tell a DLQ's messages apart, lengthened when not


def short_ids(message_ids: Sequence[str]) -> dict[str, str]:
    """Each id cut to the shortest length (at least SHORT_ID_LENGTH) at which all of them stay distinct."""
    length = SHORT_ID_LENGTH
    while len({m[:length] for m in message_ids}) < len(set(message_ids)):
        length += 1
    return {m: m[:length] for m in message_ids}


def find(transport: Transport, queues: ClientQueues, message_id: str, *, limit: int = 1000) -> DeadLetter:
    """The dead letter with this id, or the only one whose id starts with it (`dlq list` shows short ids)."""
    wanted = message_id.strip().lower()
    if not wanted:
        raise UsageError("give a message id (or its first characters, as `reactive dlq list` shows them)")
    letters = inspect(transport, queues, limit=limit)
    exact = [x for x in letters if x.message_id.lower() == wanted]
    found = exact or [x for x in letters if x.message_id.lower().startswith(wanted)]
    if len(found) == 1:
        return found[0]
    if found:
        ids = sorted(x.message_id for x in found)
        shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
        raise UsageError(
            f"{message_id} starts {len(ids)} message ids in {queues.dlq} ({shown}): give more of it"
        )
    raise ResourceNotFound(
        f"message {message_id} is not in {queues.dlq} "
        "(replayed or purged already, being looked at elsewhere, or on a FIFO queue behind the first "
        "messages of its group, which SQS locks while they are looked at)"
    )


def diagnose(letters: Sequence[DeadLetter], using: str = "default") -> list[DeadLetter]:
    """Try each decodable event against this client's replica in a transaction that is rolled back.

    Needs Django configured with the client's settings. Says whether the cause still holds.
    """
    from django.db import DatabaseError, connections, transaction

    from reactive.replica import apply
    from reactive.status import missing_sqlite_file

    missing = missing_sqlite_file(connections[using].settings_dict)
    if missing:  # never create an empty database just to try events against it
        reason = f"could not check it against the replica: no database at {missing} (set DATABASE_URL)"
        return [DeadLetter(x.message, x.event, x.error, None if x.error else reason) for x in letters]

    verdicts = {
        "applied": "applies now: the cause seems fixed, replay it",
        "stale": "older than the replica's version: replaying it changes nothing",
    }
    checked: list[DeadLetter] = []
    for letter in letters:
        if letter.event is None:
            checked.append(letter)
            continue
        try:
            with transaction.atomic(using=using):
                outcome = apply(letter.event, using)
                transaction.set_rollback(True, using=using)
            verdict = verdicts.get(outcome.status) or f"the replica refuses it: {outcome.error}"
        except DatabaseError as exc:
            verdict = f"could not check it against the replica: {exc}"
        except Exception as exc:  # noqa: BLE001 - a letter is whatever reached the DLQ: diagnose, not die
            verdict = f"applying it fails: {type(exc).__name__}: {exc}"
        checked.append(DeadLetter(letter.message, letter.event, None, verdict))
    return checked


# -- replay ------------------------------------------------------------------------------------------
@dataclass
class ReplayReport:
    planned: int  # known up front: the DLQ's visible depth (capped by --limit)
    moved: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # message id -> why its send failed (it stays)
    duplicated: dict[str, str] = field(default_factory=dict)  # sent, but the DLQ delete failed: in both
    left: int = 0  # messages in the DLQ afterwards (visible + in flight)
    dry_run: bool = False
    would_move: list[DeadLetter] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "moved": self.moved,
            "failed": len(self.failed),
            "left": self.left,
            "dry_run": self.dry_run,
            "failures": self.failed,
            "duplicated": self.duplicated,
            "would_move": [letter.to_dict() for letter in self.would_move],
        }


def planned_count(transport: Transport, queues: ClientQueues, limit: int | None) -> int:
    visible = transport.depth(queues.dlq).visible
    return visible if limit is None else min(limit, visible)


def replay(
    transport: Transport,
    queues: ClientQueues,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    rate: float | None = None,
    progress: Progress | None = None,
) -> ReplayReport:
    """Move dead letters back to the client's queue, body and attributes intact (FIFO: group id kept)."""
    report = ReplayReport(planned=planned_count(transport, queues, limit), dry_run=dry_run)
    if dry_run:
        report.would_move = inspect(transport, queues, limit=limit or 10_000)
        report.left = _total(transport.depth(queues.dlq))
        return report
    # Receipts of what stays in the DLQ (its send failed, or it was seen already): released at the end.
    held: list[str] = []
    seen: set[str] = set()  # ids of the dead letters this replay took
    # Ids SQS gave the copies this replay sent: a copy that fails again and comes back to the DLQ while the
    # replay runs is left for the next one, or a replay with a listener still refusing it would never end.
    sent: set[str] = set()
    pacer = Pacer(rate)
    nothing_new = 0
    try:
        while (limit is None or len(seen) < limit) and nothing_new < GIVE_UP_AFTER_RECEIVES:
            wanted = 10 if limit is None else min(10, limit - len(seen))
            received = _receive(transport, queues.dlq, wanted, REPLAY_VISIBILITY)
            if not received:
                break
            batch = [m for m in received if m.message_id not in seen and m.message_id not in sent]
            held += [m.receipt for m in received if m not in batch]
            nothing_new = 0 if batch else nothing_new + 1
            if not batch:
                continue
            seen.update(m.message_id for m in batch)
            pacer.wait(len(batch))
            held += _move_batch(transport, queues, batch, report, sent)
            if progress:
                progress(len(batch))
    finally:
        if held:
            with contextlib.suppress(ReactiveError):  # if this fails too, they reappear after the timeout
                transport.release(queues.dlq, held)
    report.left = _total(transport.depth(queues.dlq))
    return report


def _move_batch(
    transport: Transport,
    queues: ClientQueues,
    batch: Sequence[ReceivedMessage],
    report: ReplayReport,
    sent_message_ids: set[str],
) -> list[str]:
    """Send one batch, delete what was sent; return the receipts of what stays in the DLQ."""
    outgoing = [replay_message(str(i), m) for i, m in enumerate(batch)]
    try:
        result = transport.send(queues.queue, outgoing)
        sent_ids, send_failures = set(result.succeeded), dict(result.failed)
        sent_message_ids.update(result.message_ids.values())
    except TransportError as exc:
        if type(exc) is not TransportError:  # missing queue, credentials: stop, nothing was sent
            raise
        sent_ids, send_failures = set(), {o.id: str(exc) for o in outgoing}
    sent = [m for i, m in enumerate(batch) if str(i) in sent_ids]
    kept = [m for i, m in enumerate(batch) if str(i) not in sent_ids]
    for i, m in enumerate(batch):
        if str(i) not in sent_ids:
            report.failed[m.message_id] = send_failures.get(str(i), "not acknowledged")
    if sent:
        deleted = transport.delete(queues.dlq, [m.receipt for m in sent])
        report.moved += len(sent)
        for m in sent:
            if m.receipt in deleted.failed:
                report.duplicated[m.message_id] = deleted.failed[m.receipt]
    return [m.receipt for m in kept]


def replay_message(entry_id: str, message: ReceivedMessage) -> OutgoingMessage:
    """The message as it was: body, attributes with their data types, FIFO group id.

    A fresh deduplication id (message id + receive count) so that FIFO deduplication never drops a
    replay of a message that was first sent less than five minutes ago.
    """
    return OutgoingMessage(
        id=entry_id,
        body=message.body,
        attributes=message.message_attributes,
        raw_attributes=message.raw_message_attributes,
        group_id=message.group_id,
        dedup_id=f"{message.message_id}-{message.receive_count}",
    )


class Pacer:
    """At most ``rate`` messages a second (None: as fast as SQS answers)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.next_at = time.monotonic()

    def wait(self, count: int) -> None:
        if not self.rate:
            return
        delay = self.next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # rate limiting is the point here
        self.next_at = max(self.next_at, time.monotonic()) + count / self.rate


def _total(depth: QueueDepth) -> int:
    return depth.visible + depth.in_flight + depth.delayed


def purge(transport: Transport, queues: ClientQueues) -> int:
    """Delete every message of the DLQ; returns how many there were."""
    count = _total(transport.depth(queues.dlq))
    transport.purge(queues.dlq)
    return count


# -- SQS's own mover (StartMessageMoveTask) ------------------------------------------------------------
@dataclass(frozen=True)
class MoveTask:
    handle: str
    status: str  # RUNNING, COMPLETED, CANCELLING, CANCELLED, FAILED
    moved: int
    to_move: int | None
    failure: str = ""
    started: int | None = None  # StartedTimestamp (ms): what tells one task from the next once it ended

    @classmethod
    def starting(cls, handle: str) -> MoveTask:
        """A task just started that the list does not show yet."""
        return cls(handle=handle, status="STARTING", moved=0, to_move=None)

    @property
    def finished(self) -> bool:
        return self.status in ("COMPLETED", "CANCELLED", "FAILED")


UNSUPPORTED_CODES = {"InvalidAction", "UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation"}


def start_move_task(transport: Any, queues: ClientQueues, *, rate: float | None = None) -> str:
    """Start SQS's server-side redrive from the DLQ to the queue; returns the task handle."""
    kwargs: dict[str, Any] = {
        "SourceArn": _queue_arn(transport, queues.dlq),
        "DestinationArn": _queue_arn(transport, queues.queue),
    }
    if rate:  # SQS takes a whole number from 1 to MOVE_TASK_MAX_RATE
        kwargs["MaxNumberOfMessagesPerSecond"] = min(MOVE_TASK_MAX_RATE, max(1, round(rate)))
    with _move_task_errors(transport):
        return str(transport.sqs.start_message_move_task(**kwargs)["TaskHandle"])


def latest_move_task(transport: Any, queues: ClientQueues) -> MoveTask | None:
    """The DLQ's most recent move task, running or ended (SQS lists them newest first)."""
    with _move_task_errors(transport):
        tasks = transport.sqs.list_message_move_tasks(
            SourceArn=_queue_arn(transport, queues.dlq), MaxResults=1
        ).get("Results", [])
    if not tasks:
        return None
    task = tasks[0]
    to_move = task.get("ApproximateNumberOfMessagesToMove")
    started = task.get("StartedTimestamp")
    return MoveTask(
        handle=str(task.get("TaskHandle", "")),  # SQS names the handle of a running task only
        status=str(task.get("Status", "")),
        moved=int(task.get("ApproximateNumberOfMessagesMoved", 0)),
        to_move=None if to_move is None else int(to_move),
        failure=str(task.get("FailureReason", "")),
        started=None if started is None else int(started),
    )


def move_task_status(transport: Any, queues: ClientQueues, handle: str, before: MoveTask | None) -> MoveTask:
    """The task ``handle`` names, started after ``before`` (the latest task when it was started).

    Until the list shows a newer task than ``before``, the new one is reported as STARTING: a list that
    lags must not pass an earlier task's COMPLETED off as this one's.
    """
    task = latest_move_task(transport, queues)
    if task is None:
        return MoveTask.starting(handle)
    # Without StartedTimestamp (an endpoint that omits it) the two cannot be told apart: the latest is taken.
    if (
        before is not None
        and before.started is not None
        and task.started == before.started
        and task.handle != handle
    ):
        return MoveTask.starting(handle)
    return task


def _queue_arn(transport: Any, queue: str) -> str:
    from reactive.transport.sqs import aws_errors

    with aws_errors(f"read the ARN of queue {queue}"):
        url = transport.queue_url(queue)
        attrs = transport.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attrs["Attributes"]["QueueArn"])


@contextlib.contextmanager
def _move_task_errors(transport: Any) -> Iterator[None]:
    """SQS errors in reactive's tree; an endpoint without the move-task API (moto) gets its own message."""
    import botocore.exceptions as bexc

    from reactive.transport.sqs import aws_errors

    if not hasattr(transport, "sqs"):
        raise ReactiveError(f"--move-task needs the SQS transport; use the default mover, {DEFAULT_MOVER}")
    with aws_errors("run a message move task"):
        try:
            yield
        except bexc.ClientError as exc:
            if not _unsupported(exc):
                raise
            where = settings.aws_endpoint_url() or "this AWS endpoint"
            code = exc.response.get("Error", {}).get("Code", "")
            raise TransportError(
                f"{where} does not support StartMessageMoveTask ({code}); "
                f"use the default mover: {DEFAULT_MOVER}"
            ) from exc


def _unsupported(exc: Any) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    # A custom endpoint (moto, a local emulator) answers an API it lacks with a 500 or 501.
    custom_endpoint = settings.aws_endpoint_url() is not None
    return code in UNSUPPORTED_CODES or status == 501 or (status == 500 and custom_endpoint)
