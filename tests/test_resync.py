"""relay_rows: a sync relays its own rows, and waits for another relay that holds them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from reactive import resync
from reactive.outbox import OutboxEvent

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("captured")]
User = get_user_model()


def held_rows(n: int) -> list[int]:
    """Rows another relay has claimed (its lease moved next_attempt_at ahead) and not yet sent."""
    for i in range(n):
        User.objects.create_user(f"u{i}")
    ids = list(OutboxEvent.objects.values_list("id", flat=True))
    OutboxEvent.objects.filter(id__in=ids).update(next_attempt_at=timezone.now() + timedelta(seconds=60))
    return ids


def while_waiting(monkeypatch: pytest.MonkeyPatch, other_relay: Callable[[], None]) -> list[float]:
    """What the other relay does during the sync's first wait; returns the waits taken."""
    waits: list[float] = []

    def pause(seconds: float) -> None:
        if not waits:
            other_relay()
        waits.append(seconds)

    monkeypatch.setattr(resync, "_pause", pause)
    return waits


def test_rows_another_relay_sends_count_as_sent(memory, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    ids = held_rows(3)
    waits = while_waiting(monkeypatch, lambda: OutboxEvent.objects.update(sent_at=timezone.now()))

    assert resync.relay_rows(memory, ids) == (3, "")
    assert waits and memory.calls.count("publish") == 0  # sent once, by the relay that held them


def test_rows_whose_lease_runs_out_are_sent_by_the_sync(memory, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    ids = held_rows(3)
    while_waiting(monkeypatch, lambda: OutboxEvent.objects.update(next_attempt_at=timezone.now()))

    assert resync.relay_rows(memory, ids) == (3, "")
    assert OutboxEvent.objects.filter(sent_at__isnull=True).count() == 0


def test_rows_another_relay_failed_stay_pending(memory, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    ids = held_rows(2)
    backed_off = timezone.now() + timedelta(minutes=5)
    while_waiting(
        monkeypatch,
        lambda: OutboxEvent.objects.update(
            attempts=1, last_error="cannot reach SNS", next_attempt_at=backed_off
        ),
    )

    assert resync.relay_rows(memory, ids) == (0, "cannot reach SNS")


def test_another_rows_failure_does_not_stop_the_wait(memory, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A row of someone else's that fails (too big, say) says nothing about the rows another relay holds."""
    from reactive.outbox import RelayResult

    ids = held_rows(2)
    monkeypatch.setattr(
        resync, "relay_pending", lambda *a, **k: RelayResult(failed=1, errors={"999999": "MessageTooLong"})
    )
    while_waiting(monkeypatch, lambda: OutboxEvent.objects.update(sent_at=timezone.now()))

    assert resync.relay_rows(memory, ids) == (2, "")  # before: (0, "MessageTooLong") at once


@pytest.mark.django_db(transaction=True)
def test_advance_key_moves_the_outbox_sequence_past_a_version_and_never_back() -> None:
    """`reactive verify --advance-sequence`: after it, the next outbox id is above what clients hold."""
    from reactive.outbox import OutboxEvent, new_row
    from reactive.resync import advance_key, last_issued_key

    first = new_row("auth.user", "insert", "1", {}, ())
    first.save()
    assert advance_key(OutboxEvent, "default", first.id + 500) == first.id + 500
    assert advance_key(OutboxEvent, "default", first.id + 10) == first.id + 500  # never lowered
    assert last_issued_key(OutboxEvent, "default") == first.id + 500
    later = new_row("auth.user", "update", "1", {}, ())
    later.save()
    assert later.id == first.id + 501
