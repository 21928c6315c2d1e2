"""A sync chunk and a live save of the same user, really at once on PostgreSQL: the row lock orders them.

The sync reads a user and writes its state as an outbox row whose id is the version. A live save that
committed between that read and that write would get the lower version while carrying the newer state,
and the replica would keep the sync's older copy. The chunk's SELECT ... FOR UPDATE makes the save wait
for the chunk's commit, so the newer state always has the higher version. SQLite serializes writers, so
this is PostgreSQL's test (the SQLite pass of `make test` leaves the `postgres` mark out).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, connections

from reactive import capture
from reactive.outbox import OutboxEvent
from reactive.resync import write_chunk
from tests.support import services

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("captured", "on_postgres"),
]
User = get_user_model()


def test_a_save_during_a_sync_chunk_gets_the_higher_version(monkeypatch: pytest.MonkeyPatch) -> None:
    alice = User.objects.create_user("alice", first_name="Before")
    spec = next(t for t in capture.tracked_models() if t.model is User)
    live_save = threading.Thread(target=rename, args=(alice.pk,))
    read_by_the_sync = capture.snapshot

    def snapshot_while_a_save_runs(instance: Any, tracking: capture.Tracking) -> dict[str, Any]:
        if live_save.ident is None:
            live_save.start()
            # Without the row lock the save commits now, before the chunk writes; with it, it waits.
            services.eventually(
                lambda: not live_save.is_alive() or waiting_on_a_lock(),
                timeout=10,
                what="the live save to commit or to wait for the chunk's lock",
            )
        return read_by_the_sync(instance, tracking)

    monkeypatch.setattr(capture, "snapshot", snapshot_while_a_save_runs)
    write_chunk(spec, "alpha", [alice.pk], prune=False)
    live_save.join(10)
    assert not live_save.is_alive()

    rows = list(OutboxEvent.objects.filter(key=str(alice.pk)).order_by("id"))
    assert [(r.target, r.data.get("first_name")) for r in rows] == [
        ("", "Before"),  # alice's creation
        ("alpha", "Before"),  # the sync's copy, read before the rename committed
        ("", "After"),  # the rename, after the chunk: the highest version carries the newest state
    ]


def waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # activity is otherwise read once a transaction
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(cursor.fetchone()[0])


def rename(pk: int) -> None:
    try:
        user = User.objects.get(pk=pk)
        user.first_name = "After"
        user.save()
    finally:
        connections.close_all()


def test_a_sync_chunk_locks_users_in_key_order_as_captured_updates_do() -> None:
    """Two lockers of the same rows in different orders deadlock: PostgreSQL would lock in disk order."""
    from django.test.utils import CaptureQueriesContext

    users = [User.objects.create_user(f"order{i}") for i in range(3)]
    User.objects.filter(pk=users[0].pk).update(first_name="moved")  # its row version now sits last on disk
    tracking = capture.tracking_for(User)
    assert tracking is not None
    with CaptureQueriesContext(connection) as queries:
        write_chunk(tracking, "alpha", [u.pk for u in users], prune=False)
    locks = [q["sql"] for q in queries.captured_queries if "FOR UPDATE" in q["sql"]]
    assert locks and all('ORDER BY "auth_user"."id" ASC' in sql for sql in locks), locks
