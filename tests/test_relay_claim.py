"""The relay's claim on PostgreSQL: one statement that leases due rows and skips those another relay holds.

SQLite serializes writers and has no row locks, so this is PostgreSQL's test (the SQLite pass of
`make test` leaves the `postgres` mark out); tests/test_outbox.py covers the relay on both.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reactive import outbox
from reactive.outbox import OutboxEvent

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("captured", "on_postgres"),
]
User = get_user_model()


def test_a_claim_is_one_statement_that_leases_the_due_rows_in_id_order() -> None:
    for i in range(5):
        User.objects.create_user(f"u{i}")
    later = OutboxEvent.objects.order_by("id").last()
    assert later is not None
    OutboxEvent.objects.filter(id=later.id).update(next_attempt_at=timezone.now() + timedelta(minutes=5))
    lease = outbox._Lease.start()

    with CaptureQueriesContext(connection) as queries:
        rows = outbox._claim(10, "default", lease)

    assert len(queries) == 1, [q["sql"] for q in queries]  # no BEGIN, SELECT, UPDATE, COMMIT
    ids = [row.id for row in rows]
    assert ids == sorted(ids) and len(ids) == 4 and later.id not in ids  # the row backing off waits
    assert lease.owned == set(ids)
    assert rows[0].data["username"] == "u0" and rows[0].sent_at is None  # whole rows, fields decoded
    leased = OutboxEvent.objects.filter(id__in=ids).values_list("next_attempt_at", flat=True)
    assert set(leased) == {lease.until}
    assert outbox._claim(10, "default", outbox._Lease.start()) == []  # leased: nobody else gets them


def test_a_claim_skips_rows_another_relay_holds_and_does_not_wait_for_them() -> None:
    for i in range(6):
        User.objects.create_user(f"u{i}")
    first_three = list(OutboxEvent.objects.order_by("id").values_list("id", flat=True)[:3])
    holding, release = threading.Event(), threading.Event()

    def another_relay() -> None:
        try:
            with transaction.atomic():
                locked = OutboxEvent.objects.select_for_update().filter(id__in=first_three)
                assert len(list(locked)) == 3
                holding.set()
                release.wait(10)
        finally:
            connections.close_all()

    other = threading.Thread(target=another_relay)
    other.start()
    try:
        assert holding.wait(10), "the other relay never locked its rows"
        rows = outbox._claim(10, "default", outbox._Lease.start())
    finally:
        release.set()
        other.join(10)
    assert [row.id for row in rows] == sorted(
        set(OutboxEvent.objects.values_list("id", flat=True)) - set(first_three)
    )
