"""Dead letters against moto's server over HTTP: looking never consumes; replay keeps all, loses nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from reactive import dlq
from reactive.errors import ResourceNotFound, ServiceUnavailable, TransportError
from reactive.events import Event, encode
from reactive.transport.base import BatchResult
from reactive.transport.sqs import SqsTransport

POISON = [
    "not json at all",
    '{"schema": 1, "action": "explode", "model": "auth.user", "key": "1", "version": 1}',
    '{"schema": 99}',
]
ATTRIBUTES = {
    "model": {"DataType": "String", "StringValue": "auth.user"},
    "count": {"DataType": "Number", "StringValue": "42"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
    "origin": {"DataType": "String.legacy", "StringValue": "prototype"},
}


def event_body(action: str, key: str, version: int, **data: Any) -> str:
    return encode(Event(model="auth.user", action=action, key=key, version=version, data=data))  # type: ignore[arg-type]


def url(sqs: SqsTransport, queue: str) -> str:
    return sqs.queue_url(queue)


def put(
    sqs: SqsTransport, queue: str, body: str, attributes: dict[str, Any] | None = None, **extra: str
) -> str:
    sent = sqs.sqs.send_message(
        QueueUrl=url(sqs, queue), MessageBody=body, MessageAttributes=attributes or {}, **extra
    )
    return str(sent["MessageId"])


def total(sqs: SqsTransport, queue: str) -> int:
    d = sqs.depth(queue)
    return d.visible + d.in_flight + d.delayed


def take_all(sqs: SqsTransport, queue: str) -> list[Any]:
    found: list[Any] = []
    while batch := sqs.receive(queue, max_messages=10, wait_seconds=0, visibility_timeout=60):
        found += batch
    return found


@pytest.fixture
def alpha(sqs: SqsTransport) -> dlq.ClientQueues:
    return dlq.queues_of(sqs, "alpha")


def test_list_explains_each_poison_without_consuming_it(sqs: SqsTransport, alpha: dlq.ClientQueues) -> None:
    valid_body = event_body("update", "7", 12, username="zed")
    for body in [*POISON, valid_body]:
        put(sqs, alpha.dlq, body)

    letters = {x.message.body: x for x in dlq.inspect(sqs, alpha)}

    assert set(letters) == {*POISON, valid_body}
    assert "not JSON" in (letters["not json at all"].error or "")
    assert "unknown action 'explode'" in (letters[POISON[1]].error or "")
    assert "unsupported schema 99" in (letters[POISON[2]].error or "")
    valid = letters[valid_body]
    assert valid.error is None and valid.event is not None
    assert (valid.event.action, valid.event.key, valid.event.version) == ("update", "7", 12)
    assert "refused when applied" in valid.why
    # released at once: all four are visible again now, not after the peek's visibility timeout
    assert sqs.depth(alpha.dlq).visible == 4
    assert len(dlq.inspect(sqs, alpha)) == 4


def test_list_respects_the_limit_and_to_dict_is_json(sqs: SqsTransport, alpha: dlq.ClientQueues) -> None:
    for i in range(12):
        put(sqs, alpha.dlq, f"body {i}", ATTRIBUTES)
    letters = dlq.inspect(sqs, alpha, limit=5)
    assert len(letters) == 5
    shown = json.loads(json.dumps([x.to_dict() for x in letters]))
    assert shown[0]["message_attributes"]["blob"] == {"DataType": "Binary", "BinaryValue": "AAH/"}
    assert shown[0]["message_attributes"]["count"] == {"DataType": "Number", "StringValue": "42"}
    assert sqs.depth(alpha.dlq).visible == 12


def test_list_reads_the_dlq_whatever_count_it_reports(
    sqs: SqsTransport, alpha: dlq.ClientQueues, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On AWS a queue's ApproximateNumberOfMessages lags by up to a minute: a DLQ that reports 0 may hold
    letters, and `dlq list` said it was empty."""
    from reactive.transport.base import QueueDepth

    for i in range(3):
        put(sqs, alpha.dlq, f"body {i}")
    monkeypatch.setattr(sqs, "depth", lambda queue: QueueDepth(0, 0, 0))
    assert sorted(x.message.body for x in dlq.inspect(sqs, alpha)) == ["body 0", "body 1", "body 2"]


def test_show_finds_one_message_and_says_when_it_is_gone(sqs: SqsTransport, alpha: dlq.ClientQueues) -> None:
    wanted = put(sqs, alpha.dlq, '{"Type": "Notification", "Message": "{\\"schema\\": 7}"}')
    put(sqs, alpha.dlq, "other")
    letter = dlq.find(sqs, alpha, wanted)
    assert letter.message_id == wanted and "unsupported schema 7" in letter.why
    assert '"schema": 7' in dlq.pretty_body(letter.message.body)  # the envelope's Message is unfolded
    with pytest.raises(ResourceNotFound, match="not in"):
        dlq.find(sqs, alpha, "no-such-id")


def test_replay_moves_bodies_and_attributes_with_their_data_types(
    sqs: SqsTransport, alpha: dlq.ClientQueues
) -> None:
    bodies = [f"message {i}" for i in range(13)]  # more than one batch
    for body in bodies:
        put(sqs, alpha.dlq, body, ATTRIBUTES)
    seen: list[int] = []

    report = dlq.replay(sqs, alpha, progress=seen.append)

    assert (report.planned, report.moved, report.failed, report.left) == (13, 13, {}, 0)
    assert sum(seen) == 13
    moved = take_all(sqs, alpha.queue)
    assert sorted(m.body for m in moved) == sorted(bodies)
    for m in moved:
        assert dict(m.raw_message_attributes) == ATTRIBUTES
    assert total(sqs, alpha.dlq) == 0


def test_dry_run_and_limit(sqs: SqsTransport, alpha: dlq.ClientQueues) -> None:
    for i in range(5):
        put(sqs, alpha.dlq, f"m{i}")
    dry = dlq.replay(sqs, alpha, dry_run=True)
    assert (dry.moved, len(dry.would_move), dry.left) == (0, 5, 5)
    assert total(sqs, alpha.queue) == 0

    some = dlq.replay(sqs, alpha, limit=2)
    assert (some.planned, some.moved, some.left) == (2, 2, 3)
    assert total(sqs, alpha.queue) == 2


def test_what_cannot_be_sent_stays_in_the_dlq(sqs: SqsTransport, alpha: dlq.ClientQueues) -> None:
    # A real refusal: the queue now takes at most 1 KiB, the dead letter is larger.
    sqs.sqs.set_queue_attributes(QueueUrl=url(sqs, alpha.queue), Attributes={"MaximumMessageSize": "1024"})
    big = put(sqs, alpha.dlq, "x" * 2000)

    report = dlq.replay(sqs, alpha)

    assert report.moved == 0 and list(report.failed) == [big]
    assert total(sqs, alpha.queue) == 0
    assert sqs.depth(alpha.dlq).visible == 1  # released again at once, not hidden for the replay timeout


class DiesAfterSending(SqsTransport):
    """The process dies between the send and the delete (the worst moment)."""

    def delete(self, queue: str, receipts: Any) -> BatchResult:
        raise ServiceUnavailable("the network went away")


def test_interrupted_between_send_and_delete_loses_nothing(
    sqs: SqsTransport, alpha: dlq.ClientQueues
) -> None:
    put(sqs, alpha.dlq, "precious")
    dying = DiesAfterSending(sqs.topic_name, sqs.sns, sqs.sqs)
    with pytest.raises(ServiceUnavailable):
        dlq.replay(dying, alpha)
    assert total(sqs, alpha.queue) == 1  # sent
    assert total(sqs, alpha.dlq) == 1  # and still there (in flight until the timeout): at worst in both


def test_fifo_replay_keeps_the_group_id(sqs: SqsTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    from reactive.provision import Options, Provisioner

    monkeypatch.setenv("REACTIVE_FIFO", "1")
    Provisioner(Options(clients=["alpha"], fifo=True, max_receives=2)).run()
    fifo = dlq.queues_of(sqs, "alpha")
    assert fifo.dlq.endswith("-dlq.fifo")
    put(sqs, fifo.dlq, "first", ATTRIBUTES, MessageGroupId="7", MessageDeduplicationId="a")
    put(sqs, fifo.dlq, "second", MessageGroupId="8", MessageDeduplicationId="b")

    report = dlq.replay(sqs, fifo)

    assert report.moved == 2
    moved = {m.body: m for m in take_all(sqs, fifo.queue)}
    assert {b: m.group_id for b, m in moved.items()} == {"first": "7", "second": "8"}
    assert dict(moved["first"].raw_message_attributes) == ATTRIBUTES


def test_move_task_names_the_default_mover_where_unsupported(
    sqs: SqsTransport, alpha: dlq.ClientQueues
) -> None:
    with pytest.raises(TransportError, match="does not support StartMessageMoveTask.*default mover"):
        dlq.start_move_task(sqs, alpha)


def test_purge_empties_the_dlq(sqs: SqsTransport, alpha: dlq.ClientQueues) -> None:
    for body in POISON:
        put(sqs, alpha.dlq, body)
    assert dlq.purge(sqs, alpha) == 3
    assert total(sqs, alpha.dlq) == 0


def test_a_wrong_client_name_gets_a_clear_message(sqs: SqsTransport) -> None:
    with pytest.raises(
        ResourceNotFound, match=r"client 'gamma': is the name right.*provision --client gamma"
    ):
        dlq.queues_of(sqs, "gamma")


@pytest.mark.django_db
def test_diagnose_says_why_the_replica_refuses_and_changes_nothing(
    sqs: SqsTransport, alpha: dlq.ClientQueues
) -> None:
    from reactive.replica import ReplicaState

    user = get_user_model().objects.create_user("carol", is_staff=True)  # this client's own admin account
    dave = get_user_model().objects.create_user("dave")  # master key 900, at version 3
    ReplicaState.objects.create(model="auth.user", key="900", version=3, local_pk=str(dave.pk))
    put(sqs, alpha.dlq, event_body("insert", "5", 10, username="carol", first_name="Caroline"))
    put(sqs, alpha.dlq, event_body("update", "900", 2, first_name="old"))

    checked = {x.event.key: x for x in dlq.diagnose(dlq.inspect(sqs, alpha)) if x.event}

    assert "username 'carol' is held by a local staff user" in checked["5"].why
    assert "changes nothing" in checked["900"].why
    assert not ReplicaState.objects.filter(key="5").exists()  # rolled back
    user.delete()  # the cause, fixed
    again = {x.event.key: x for x in dlq.diagnose(dlq.inspect(sqs, alpha)) if x.event}
    assert "applies now" in again["5"].why
    assert not get_user_model().objects.filter(first_name="Caroline").exists()


def test_the_listener_asks_for_less_than_the_dlq_tools(sqs: SqsTransport, prefix: str) -> None:
    """A lean receive (the listener's) leaves out message attributes but keeps what the listener reads;
    the DLQ tools still get everything, so that a replay keeps the attributes."""
    queue = f"{prefix}-alpha"
    put(sqs, queue, "lean", ATTRIBUTES)
    (lean,) = sqs.receive(queue, wait_seconds=0, visibility_timeout=0, lean=True)
    assert lean.body == "lean" and lean.message_attributes == {}
    assert lean.receive_count == 1 and lean.sent_timestamp is not None
    (full,) = sqs.receive(queue, wait_seconds=0)
    assert full.message_attributes and full.receive_count == 2


class RefusedAgain(SqsTransport):
    """While the replay runs, the listener refuses each copy at once and the redrive puts it back in the DLQ."""

    dlq_name = ""
    sends = 0

    def send(self, queue: str, messages: Any) -> BatchResult:
        self.sends += 1
        if self.sends > 20:
            raise AssertionError("the replay never ends")
        return super().send(self.dlq_name, messages)  # the copy, with the new message id SQS gives it


def test_a_replay_ends_when_what_it_sent_dies_again(sqs: SqsTransport, alpha: dlq.ClientQueues) -> None:
    for i in range(3):
        put(sqs, alpha.dlq, f"poison {i}")
    bouncing = RefusedAgain(sqs.topic_name, sqs.sns, sqs.sqs)
    bouncing.dlq_name = alpha.dlq

    report = dlq.replay(bouncing, alpha)

    assert (report.moved, report.left) == (3, 3)  # moved once each; the copies wait for the next replay
    assert sqs.depth(alpha.dlq).visible == 3  # released at the end, not hidden for the replay's timeout


def test_a_move_task_rate_is_a_whole_number_sqs_takes() -> None:
    calls: list[dict[str, Any]] = []

    class Sqs:
        def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
            return {"Attributes": {"QueueArn": f"arn:{QueueUrl}"}}

        def start_message_move_task(self, **kwargs: Any) -> dict[str, str]:
            calls.append(kwargs)
            return {"TaskHandle": "h"}

    class Transport:
        sqs = Sqs()

        def queue_url(self, queue: str) -> str:
            return queue

    queues = dlq.ClientQueues("alpha", "q", "q-dlq")
    for rate in (0.5, 2.6, 10_000):
        dlq.start_move_task(Transport(), queues, rate=rate)
    assert [c["MaxNumberOfMessagesPerSecond"] for c in calls] == [1, 3, 500]


def test_a_move_task_is_not_mistaken_for_the_one_before_it() -> None:
    # ListMessageMoveTasks may still show the previous, completed task just after a start: that one's
    # COMPLETED must not be reported as the new task's. SQS names the handle of running tasks only.
    old = {"Status": "COMPLETED", "StartedTimestamp": 1000, "ApproximateNumberOfMessagesMoved": 7}
    running = {
        "Status": "RUNNING",
        "StartedTimestamp": 2000,
        "TaskHandle": "new",
        "ApproximateNumberOfMessagesMoved": 1,
    }
    done = {"Status": "COMPLETED", "StartedTimestamp": 2000, "ApproximateNumberOfMessagesMoved": 3}
    listings = [[old], [old], [running], [done]]

    class Sqs:
        def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
            return {"Attributes": {"QueueArn": f"arn:{QueueUrl}"}}

        def list_message_move_tasks(self, **kwargs: Any) -> dict[str, Any]:
            return {"Results": listings.pop(0)}

    class Transport:
        sqs = Sqs()

        def queue_url(self, queue: str) -> str:
            return queue

    queues = dlq.ClientQueues("alpha", "q", "q-dlq")
    before = dlq.latest_move_task(Transport(), queues)
    seen = [dlq.move_task_status(Transport(), queues, "new", before) for _ in range(3)]

    assert [(s.status, s.moved) for s in seen] == [("STARTING", 0), ("RUNNING", 1), ("COMPLETED", 3)]
    assert not seen[0].finished and seen[2].finished
