"""The relay: batches of 10, marks sent, backs off failures, claims with a lease, prunes old rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from reactive.errors import ServiceUnavailable
from reactive.events import decode
from reactive.outbox import OutboxEvent, backlog, prune_sent, record, relay_pending
from reactive.transport.base import BatchResult, OutgoingMessage

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("captured")]
User = get_user_model()


class DownTransport:
    def publish(self, messages: Sequence[OutgoingMessage]) -> BatchResult:
        raise ServiceUnavailable("cannot reach http://127.0.0.1:1")


class HalfTransport:
    """Acknowledges every other entry, like a PublishBatch with partial failures."""

    def publish(self, messages: Sequence[OutgoingMessage]) -> BatchResult:
        ok = [m.id for i, m in enumerate(messages) if i % 2 == 0]
        return BatchResult(tuple(ok), {m.id: "InternalError" for i, m in enumerate(messages) if i % 2})


def make_users(n: int) -> None:
    for i in range(n):
        User.objects.create_user(f"u{i}", first_name=f"U{i}")


def test_relay_publishes_in_batches_of_ten_and_marks_sent(memory) -> None:  # type: ignore[no-untyped-def]
    make_users(25)
    result = relay_pending(memory)
    assert (result.sent, result.failed) == (25, 0)
    assert memory.calls.count("publish") == 3
    assert backlog().pending == 0
    received = memory.receive(memory_queue(memory, "alpha"), max_messages=10, wait_seconds=0)
    event = decode(received[0].body)
    assert event.action == "insert" and event.version == OutboxEvent.objects.order_by("id").first().id  # type: ignore[union-attr]
    assert received[0].message_attributes == {"model": "auth.user", "action": "insert"}
    assert relay_pending(memory).sent == 0  # nothing is sent twice


def memory_queue(memory, client: str) -> str:  # type: ignore[no-untyped-def]
    return next(q for q in memory._subscribers if q.endswith(f"-{client}"))


def test_failures_stay_pending_with_backoff_and_are_retried() -> None:
    make_users(3)
    result = relay_pending(DownTransport())
    assert (result.sent, result.failed) == (0, 3)
    row = OutboxEvent.objects.first()
    assert row is not None and row.attempts == 1 and row.next_attempt_at > timezone.now()
    assert "cannot reach" in row.last_error
    assert relay_pending(DownTransport()).failed == 0  # not due yet: backoff holds
    OutboxEvent.objects.update(next_attempt_at=timezone.now())
    assert backlog().pending == 3


def test_partial_batch_failures_only_retry_the_failed_entries() -> None:
    make_users(4)
    result = relay_pending(HalfTransport())
    assert (result.sent, result.failed) == (2, 2)
    assert OutboxEvent.objects.filter(sent_at__isnull=True, attempts=1).count() == 2


def test_claimed_rows_are_not_relayed_twice_during_the_lease(memory) -> None:  # type: ignore[no-untyped-def]
    make_users(2)
    OutboxEvent.objects.update(
        next_attempt_at=timezone.now() + timedelta(seconds=60)
    )  # as a claim leaves them
    assert relay_pending(memory).sent == 0
    OutboxEvent.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))  # the lease ran out
    assert relay_pending(memory).sent == 2


def test_targeted_rows_go_to_one_client_queue_only(memory) -> None:  # type: ignore[no-untyped-def]
    record("auth.user", "insert", "1", {"username": "x"}, ["username"], using="default", target="beta")
    assert relay_pending(memory).sent == 1
    assert memory.depth(memory_queue(memory, "beta")).visible == 1
    assert memory.depth(memory_queue(memory, "alpha")).visible == 0


def test_prune_removes_only_old_sent_rows(memory) -> None:  # type: ignore[no-untyped-def]
    make_users(3)
    relay_pending(memory)
    OutboxEvent.objects.filter(id=OutboxEvent.objects.order_by("id").first().id).update(  # type: ignore[union-attr]
        sent_at=timezone.now() - timedelta(days=30)
    )
    User.objects.create_user("pending-one")
    assert prune_sent(older_than=timedelta(days=7)) == 1
    assert OutboxEvent.objects.count() == 3


def test_backlog_reports_the_oldest_pending_row() -> None:
    make_users(2)
    OutboxEvent.objects.filter(id=OutboxEvent.objects.order_by("id").first().id).update(  # type: ignore[union-attr]
        occurred_at=timezone.now() - timedelta(minutes=5)
    )
    report = backlog()
    assert report.pending == 2 and report.oldest_age_seconds is not None and report.oldest_age_seconds >= 299


def test_under_load_the_relay_waits_briefly_for_a_full_batch(memory, monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    """Rows arriving faster than the relay publishes: it waits while they keep coming (no longer than the
    linger) and sends one fuller PublishBatch instead of several thin ones."""
    from reactive import outbox

    settings.REACTIVE_RELAY_LINGER = 0.05
    make_users(3)
    waves = [(3, 6), (6, 8)]  # two waits bring rows, the third brings none: the batch goes
    waits: list[float] = []
    now = [0.0]  # the relay's clock: the waits are taken on it, the inserts take none of it

    def wait_while_more_arrive(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds
        if waves:
            make_users_from(*waves.pop(0))

    monkeypatch.setattr(outbox, "_clock", lambda: now[0])
    monkeypatch.setattr(outbox, "_pause", wait_while_more_arrive)
    assert relay_pending(memory).sent == 8
    assert memory.calls.count("publish") == 1
    assert len(waits) == 3 and all(0 < wait <= 0.05 for wait in waits)


def test_the_waits_of_one_batch_add_up_to_the_linger_at_most(memory, monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    from reactive import outbox

    settings.REACTIVE_RELAY_LINGER = 0.02
    make_users(2)
    waits: list[float] = []
    arrived = iter(range(2, 100))

    now = [0.0]

    def a_row_every_wait(seconds: float) -> None:  # changes keep coming, one at a time
        waits.append(seconds)
        now[0] += seconds  # the wait is taken, on the relay's clock
        first = next(arrived)
        make_users_from(first, first + 1)

    monkeypatch.setattr(outbox, "_clock", lambda: now[0])
    monkeypatch.setattr(outbox, "_pause", a_row_every_wait)
    relay_pending(memory)
    assert waits and sum(waits) <= 0.02 + 1e-9  # (the clock's float sums)


def test_a_lone_change_is_published_at_once(memory, monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    from reactive import outbox

    settings.REACTIVE_RELAY_LINGER = 0.05
    monkeypatch.setattr(outbox, "_pause", lambda seconds: pytest.fail("a quiet system never waits"))
    make_users(1)
    assert relay_pending(memory).sent == 1
    make_users_from(1, 11)  # a full batch goes at once too
    assert relay_pending(memory).sent == 10


def make_users_from(start: int, stop: int) -> None:
    for i in range(start, stop):
        User.objects.create_user(f"u{i}")


@pytest.mark.parametrize(
    "linger, burst_age",
    [
        (5, 0.0),  # the wait is stubbed: a long linger only keeps the burst in mind
        (0.05, 0.5),  # ten lingers: a producer waiting on its changes sends the next wave a round trip later
    ],
    ids=["right after", "a round trip after"],
)
def test_a_lone_row_after_a_burst_waits_for_the_next_ones(
    memory, monkeypatch, settings, linger, burst_age
) -> None:  # type: ignore[no-untyped-def]
    """Under load the row that wakes the relay is the first of the next burst: it waits for its company."""
    from reactive import outbox

    settings.REACTIVE_RELAY_LINGER = linger
    make_users(10)
    assert relay_pending(memory).sent == 10  # a full batch: a burst, published at once
    outbox._last_burst["default"].at -= burst_age
    waits: list[float] = []

    def wait_while_more_arrive(seconds: float) -> None:
        waits.append(seconds)
        make_users_from(11, 20)

    monkeypatch.setattr(outbox, "_pause", wait_while_more_arrive)
    make_users_from(10, 11)
    assert relay_pending(memory).sent == 10
    assert memory.calls.count("publish") == 2
    assert len(waits) == 1 and 0 <= waits[0] <= linger


def test_a_lone_row_long_after_a_burst_goes_at_once(memory, monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    from reactive import outbox

    settings.REACTIVE_RELAY_LINGER = 0.05
    make_users(3)
    relay_pending(memory)
    outbox._last_burst["default"].at -= 0.05 * outbox.BURST_MEMORY_LINGERS + 0.1  # the memory's end
    monkeypatch.setattr(outbox, "_pause", lambda seconds: pytest.fail("the burst is over"))
    make_users_from(3, 4)
    assert relay_pending(memory).sent == 1


def test_a_wait_that_brings_nothing_ends_the_burst(memory, monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    from reactive import outbox

    settings.REACTIVE_RELAY_LINGER = 5
    make_users(10)
    relay_pending(memory)
    waits: list[float] = []
    monkeypatch.setattr(outbox, "_pause", waits.append)
    make_users_from(10, 11)
    assert relay_pending(memory).sent == 1 and len(waits) == 1  # waited, nobody came
    make_users_from(11, 12)
    assert relay_pending(memory).sent == 1 and len(waits) == 1  # quiet again: at once


def test_rows_whose_clocks_disagree_do_not_break_the_linger(memory, settings) -> None:  # type: ignore[no-untyped-def]
    """Versions follow ids; occurred_at comes from each web process's clock and may run backwards."""
    settings.REACTIVE_RELAY_LINGER = 0.05
    make_users(3)
    rows = list(OutboxEvent.objects.order_by("id"))
    OutboxEvent.objects.filter(id=rows[-1].id).update(occurred_at=rows[0].occurred_at - timedelta(seconds=1))
    assert relay_pending(memory).sent == 3


def test_retried_rows_never_make_the_relay_wait(memory, monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    """A retry's time of arrival is long past: it says nothing about how fast changes come now."""
    from reactive import outbox

    settings.REACTIVE_RELAY_LINGER = 5
    make_users(3)
    OutboxEvent.objects.update(attempts=2, occurred_at=timezone.now() - timedelta(minutes=10))
    monkeypatch.setattr(outbox, "_pause", lambda seconds: pytest.fail("retries are not a burst"))
    assert relay_pending(memory).sent == 3
    make_users_from(3, 4)
    assert relay_pending(memory).sent == 1


def test_a_lone_retry_after_a_burst_goes_at_once(memory, monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    from reactive import outbox

    settings.REACTIVE_RELAY_LINGER = 5
    make_users(10)
    relay_pending(memory)  # a burst, just now
    make_users_from(10, 11)
    OutboxEvent.objects.filter(sent_at__isnull=True).update(attempts=1)
    monkeypatch.setattr(outbox, "_pause", lambda seconds: pytest.fail("a retry is not the next burst"))
    assert relay_pending(memory).sent == 1


def test_the_linger_must_be_a_finite_number(memory, settings) -> None:  # type: ignore[no-untyped-def]
    from reactive.errors import ConfigError

    settings.REACTIVE_RELAY_LINGER = "nan"
    make_users(2)
    with pytest.raises(ConfigError, match="finite"):
        relay_pending(memory)
