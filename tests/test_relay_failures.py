"""What a failing, refusing or slow SNS does to the relay: nothing lost, and nothing held back by one bad row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from reactive import outbox, tasks
from reactive.errors import TransportError
from reactive.outbox import OutboxEvent, RelayResult, backoff, record, relay_pending
from reactive.transport.base import (
    BATCH_LIMIT,
    MAX_BATCH_BYTES,
    BatchResult,
    OutgoingMessage,
    message_size,
    packed,
)
from reactive.transport.sqs import SqsTransport

pytestmark = pytest.mark.django_db


def rows(n: int, size: int = 10) -> list[OutboxEvent]:
    """n outbox rows for the topic whose data is about ``size`` bytes."""
    return [
        record("test.thing", "update", str(i), {"blob": "x" * size}, ["blob"], using="default")
        for i in range(n)
    ]


class Recording:
    """A transport that records each call's ids and lets a test act during a call."""

    def __init__(self, during: Callable[[int, list[str]], BatchResult | None] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.during = during

    def publish(self, messages: Sequence[OutgoingMessage]) -> BatchResult:
        ids = [m.id for m in messages]
        self.calls.append(ids)
        outcome = self.during(len(self.calls), ids) if self.during else None
        return outcome or BatchResult(tuple(ids))

    def published(self) -> list[int]:
        return [int(i) for call in self.calls for i in call]


def message(size: int, id: str = "1") -> OutgoingMessage:
    return OutgoingMessage(id=id, body="b" * size, attributes={"model": "test.thing", "action": "update"})


def test_batches_hold_ten_messages_and_256_kib_at_most() -> None:
    small = [message(100, str(i)) for i in range(25)]
    assert [len(b) for b in packed(small)[0]] == [10, 10, 5]
    big = [message(60_000, str(i)) for i in range(10)]
    batches, too_big = packed(big)
    assert too_big == [] and [len(b) for b in batches] == [4, 4, 2]
    assert all(sum(message_size(m) for m in b) <= MAX_BATCH_BYTES for b in batches)
    over = message(MAX_BATCH_BYTES, "x")  # its attributes take it over
    assert packed([over, *small[:3]]) == ([small[:3]], [over])


def test_rows_of_30_kb_all_reach_the_topic(memory) -> None:  # type: ignore[no-untyped-def]
    rows(10, size=30_000)  # 300 KB: one PublishBatch would be refused as a whole
    result = relay_pending(memory)
    assert (result.sent, result.failed) == (10, 0)
    assert memory.calls.count("publish") == 2


def test_a_row_too_big_for_sns_fails_alone_with_a_clear_error(memory) -> None:  # type: ignore[no-untyped-def]
    good = rows(3)
    huge = record("test.thing", "update", "big", {"blob": "x" * MAX_BATCH_BYTES}, ["blob"], using="default")
    result = relay_pending(memory)
    assert (result.sent, result.failed) == (3, 1)
    huge.refresh_from_db()
    assert huge.sent_at is None and huge.attempts == 1
    assert "MessageTooLong" in huge.last_error and "cannot be sent" in huge.last_error
    assert OutboxEvent.objects.filter(id__in=[r.id for r in good], sent_at__isnull=False).count() == 3


def test_the_sqs_transport_never_sends_aws_a_call_it_would_refuse() -> None:
    class Sns:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def publish_batch(self, TopicArn: str, PublishBatchRequestEntries: list[dict[str, Any]]) -> Any:
            self.calls.append(sum(len(e["Message"]) for e in PublishBatchRequestEntries))
            return {"Successful": [{"Id": e["Id"]} for e in PublishBatchRequestEntries]}

    class Sts:
        def get_caller_identity(self) -> dict[str, str]:
            return {"Account": "123456789012"}

    sns = Sns()
    transport = SqsTransport("reactive-users", sns=sns, sqs=object(), sts=Sts())
    outcome = transport.publish([message(100_000, str(i)) for i in range(4)] + [message(300_000, "huge")])
    assert sorted(outcome.succeeded) == ["0", "1", "2", "3"] and "MessageTooLong" in outcome.failed["huge"]
    assert sns.calls == [200_000, 200_000]


def test_a_call_aws_refuses_as_a_whole_is_retried_row_by_row() -> None:
    batch = rows(10)
    poison = str(batch[4].id)

    def refuse_batches_holding_the_poison(_: int, ids: list[str]) -> BatchResult | None:
        if poison in ids:
            raise TransportError("publish: InvalidParameter: bad entry", "InvalidParameter", 400)
        return None

    transport = Recording(refuse_batches_holding_the_poison)
    result = relay_pending(transport)  # type: ignore[arg-type]
    assert (result.sent, result.failed) == (9, 1)
    assert "InvalidParameter" in result.errors[poison]
    assert OutboxEvent.objects.filter(sent_at__isnull=True).get().id == int(poison)


@pytest.mark.parametrize(
    "error",
    [
        TransportError("publish: Throttling: rate exceeded", "Throttling", 400),
        TransportError("publish: InternalError: try again", "InternalError", 500),
    ],
)
def test_throttling_or_an_aws_outage_is_not_retried_row_by_row(error: TransportError) -> None:
    rows(10)

    def fail(_: int, ids: list[str]) -> BatchResult:
        raise error

    transport = Recording(fail)
    assert relay_pending(transport).failed == 10  # type: ignore[arg-type]
    assert len(transport.calls) == 1


def test_each_batch_is_marked_sent_as_soon_as_its_call_returns() -> None:
    first = rows(25)[:BATCH_LIMIT]
    seen_sent: list[int] = []

    def count_sent(call: int, ids: list[str]) -> None:
        if call == 2:
            seen_sent.append(
                OutboxEvent.objects.filter(id__in=[r.id for r in first], sent_at__isnull=False).count()
            )

    relay_pending(Recording(count_sent))  # type: ignore[arg-type]
    assert seen_sent == [BATCH_LIMIT]


def test_a_relay_held_up_past_its_lease_keeps_the_rows_it_still_owns(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    claimed = rows(30)
    monkeypatch.setattr(outbox._Lease, "half_spent", lambda self: True)  # renew before every call
    taken = [r.id for r in claimed[20:]]  # another relay claimed these once this one's lease ran out

    def another_relay_takes_the_last_batch(call: int, ids: list[str]) -> None:
        if call == 1:
            OutboxEvent.objects.filter(id__in=taken).update(
                next_attempt_at=timezone.now() + timedelta(hours=1)
            )
        if call == 2:
            leased = OutboxEvent.objects.filter(id__in=[int(i) for i in ids]).values_list(
                "next_attempt_at", flat=True
            )
            assert all(until > timezone.now() for until in leased)  # renewed: still this relay's

    transport = Recording(another_relay_takes_the_last_batch)
    result = relay_pending(transport)  # type: ignore[arg-type]
    assert result.sent == 20 and transport.published() == [r.id for r in claimed[:20]]
    assert OutboxEvent.objects.filter(id__in=taken, sent_at__isnull=True).count() == 10  # theirs to send


def test_backoff_stays_at_its_cap_however_many_attempts() -> None:
    assert backoff(1) == timedelta(seconds=1)
    assert backoff(5000) == timedelta(seconds=300)


def test_a_row_refused_for_days_neither_crashes_the_relay_nor_holds_back_others(memory) -> None:  # type: ignore[no-untyped-def]
    stuck = record("test.thing", "update", "big", {"blob": "x" * MAX_BATCH_BYTES}, ["blob"], using="default")
    OutboxEvent.objects.filter(id=stuck.id).update(attempts=1100)
    healthy = rows(2)
    result = relay_pending(memory)
    assert (result.sent, result.failed) == (2, 1)
    stuck.refresh_from_db()
    assert stuck.attempts == 1101 and stuck.next_attempt_at > timezone.now()
    assert OutboxEvent.objects.filter(id__in=[r.id for r in healthy], sent_at__isnull=False).count() == 2


def test_prune_with_no_retention_prunes_every_sent_row(memory) -> None:  # type: ignore[no-untyped-def]
    rows(2)
    relay_pending(memory)
    assert outbox.prune_sent(older_than=timedelta(0)) == 2


def test_the_sweep_prunes_and_returns_under_steady_load(monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    settings.REACTIVE_SWEEP_INTERVAL = 1
    old = rows(1)[0]
    OutboxEvent.objects.filter(id=old.id).update(sent_at=timezone.now() - timedelta(days=30))
    runs: list[int] = []

    def always_more(transport: Any, using: str) -> RelayResult:  # changes keep arriving: every run sends some
        runs.append(1)
        return RelayResult(sent=10)

    monkeypatch.setattr(outbox, "relay_pending", always_more)
    assert tasks.sweep_outbox() == 10 * len(runs)
    assert len(runs) > 1 and not OutboxEvent.objects.filter(id=old.id).exists()


def test_rows_written_to_another_database_are_relayed_from_it(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A project whose router keeps users in their own database: its outbox rows live there too."""
    from celery import current_app
    from django.contrib.auth import get_user_model

    from reactive import capture

    capture.track(get_user_model(), databases=["users"])
    try:
        assert outbox.databases() == ["users"]
    finally:
        capture.untrack(get_user_model())
    sent: list[dict[str, Any] | None] = []
    monkeypatch.setattr(current_app, "send_task", lambda name, kwargs=None: sent.append(kwargs))
    monkeypatch.setenv("REACTIVE_RELAY", "celery")
    outbox._relay_request("users")()
    outbox._relay_request("default")()
    assert sent == [{"using": "users"}, None]
    assert outbox._relay_request("users") is outbox._relay_request("users")  # one relay per transaction

    relayed: list[str] = []
    monkeypatch.setattr(outbox, "databases", lambda: ["default", "users"])
    monkeypatch.setattr(outbox, "prune_sent", lambda using: relayed.append(f"prune {using}") or 0)
    monkeypatch.setattr(
        outbox, "relay_pending", lambda transport, using: relayed.append(using) or RelayResult()
    )
    tasks.sweep_outbox()
    tasks.relay_outbox(using="users")
    assert relayed == ["prune default", "default", "prune users", "users", "users"]  # alias by alias


def test_a_refusal_of_the_topic_itself_is_not_retried_for_every_row() -> None:
    rows(10)

    def refuse_everything(_: int, ids: list[str]) -> BatchResult:
        raise TransportError("publish: AuthorizationError: not allowed to publish", "AuthorizationError", 403)

    transport = Recording(refuse_everything)
    result = relay_pending(transport)  # type: ignore[arg-type]
    assert result.failed == 10 and all("AuthorizationError" in e for e in result.errors.values())
    assert len(transport.calls) == 2  # the batch, then one row alone: refused the same way, so that is all


def test_a_busy_database_does_not_starve_the_sweep_of_another(monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    settings.REACTIVE_SWEEP_INTERVAL = 1
    relayed: list[str] = []

    def default_always_busy(transport: Any, using: str) -> RelayResult:
        relayed.append(using)
        return RelayResult(sent=10 if using == "default" else 0)

    monkeypatch.setattr(outbox, "databases", lambda: ["default", "users"])
    monkeypatch.setattr(outbox, "prune_sent", lambda using: 0)
    monkeypatch.setattr(outbox, "relay_pending", default_always_busy)
    tasks.sweep_outbox()
    assert relayed.count("users") == 1 and relayed.count("default") > 1


def test_a_save_while_the_broker_is_down_logs_one_line_and_keeps_the_row(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from celery import current_app
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from kombu.exceptions import OperationalError

    from reactive import capture

    asked: list[str] = []

    def broker_down(name: str, kwargs: Any = None) -> None:
        asked.append(name)
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    def save_and_commit(username: str) -> None:
        with transaction.atomic():
            get_user_model().objects.create_user(username)
            connection = transaction.get_connection()
            callbacks = [entry[1] for entry in connection.run_on_commit]
        for callback in callbacks:  # pytest-django's transaction never commits: run what a commit would
            callback()

    monkeypatch.setattr(current_app, "send_task", broker_down)
    monkeypatch.setenv("REACTIVE_RELAY", "celery")
    capture.track(get_user_model(), predicate=capture.non_staff)
    try:
        save_and_commit("alice")
        save_and_commit("bob")  # the broker refused moments ago: this save does not wait on it again
        asked_in_the_rest = len(asked)
        monkeypatch.setattr(outbox, "_broker_down_until", 0.0)  # the rest is over
        save_and_commit("carol")
    finally:
        capture.untrack(get_user_model())

    assert OutboxEvent.objects.filter(sent_at__isnull=True).count() == 3  # the sweep will send them
    assert asked_in_the_rest == 1 and len(asked) == 2
    warnings = [r for r in caplog.records if r.name == "reactive.outbox" and r.levelname == "WARNING"]
    assert [r.getMessage() for r in warnings][0] == (
        "relay not requested (OperationalError: Error 111 connecting to 127.0.0.1:6379. Connection refused.); "
        "the outbox sweep will send the row, and saves do not ask the broker again for 5 s"
    )
    assert len(warnings) == 2 and not any(r.exc_info for r in caplog.records)


def test_a_misspelt_relay_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from reactive import settings
    from reactive.errors import ConfigError

    monkeypatch.setenv("REACTIVE_RELAY", "inlne")  # once taken as "off": no relay was ever asked for
    with pytest.raises(ConfigError, match="REACTIVE_RELAY must be one of celery, inline, off, got 'inlne'"):
        settings.relay_mode()
    with pytest.raises(ConfigError):
        outbox._request_relay()


def test_one_database_failing_does_not_stop_the_sweep_of_the_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A tracked database that does not answer (or refuses the claim): the others are swept all the same,
    and the log says so once when it starts failing and once when it works again."""
    import logging

    from django.db import OperationalError

    down = {"users"}
    relayed: list[str] = []

    def prune(using: str) -> int:
        if using in down:
            raise OperationalError("could not connect to server: Connection refused")
        return 0

    def relay(transport: Any, using: str) -> RelayResult:
        relayed.append(using)
        return RelayResult(sent=0)

    monkeypatch.setattr(outbox, "databases", lambda: ["default", "users"])
    monkeypatch.setattr(outbox, "prune_sent", prune)
    monkeypatch.setattr(outbox, "relay_pending", relay)
    monkeypatch.setattr(tasks, "_sweep_streaks", {})
    with caplog.at_level(logging.DEBUG, logger="reactive.tasks"):
        tasks.sweep_outbox()
        tasks.sweep_outbox()
        down.clear()
        tasks.sweep_outbox()
    assert relayed == ["default", "default", "default", "users"]
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert said == [
        (
            "WARNING",
            "sweep: database users failed: OperationalError: could not connect to server: Connection "
            "refused; retrying, silently until it works",
        ),
        ("INFO", "sweep: database users works again"),
    ]
