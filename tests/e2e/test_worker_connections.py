"""The master's Celery worker keeps its database connection from relay to relay, and replaces a broken one.

A real worker (solo pool) relays each save's outbox row; PostgreSQL's pg_stat_activity shows which
connections the worker holds between tasks.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.support.services import eventually
from tests.support.sites import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SAVE = """
from django.contrib.auth import get_user_model
get_user_model().objects.create_user({name!r})
"""


def save_and_relay(system: Deployment, db: psycopg.Connection, name: str) -> None:
    system.python("master", SAVE.format(name=name))
    eventually(
        lambda: (
            db.execute("SELECT count(*) FROM reactive_outboxevent WHERE sent_at IS NULL").fetchone() == (0,)
        ),
        timeout=30,
        what=f"the worker to relay {name}'s row",
    )


def worker_backends(db: psycopg.Connection) -> list[int]:
    """The connections to the master's database other than this test's own (the worker's, once the
    saving processes have exited)."""
    rows = db.execute(  # client backends only: autovacuum workers list the database too
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend'"
    ).fetchall()
    return sorted(row[0] for row in rows)


def test_relays_reuse_one_connection_and_a_broken_one_is_replaced(pg_deployment: Deployment) -> None:
    system = pg_deployment
    system.start_worker()
    with psycopg.connect(system.url("master"), autocommit=True) as db:
        save_and_relay(system, db, "first")
        # The saving process has exited, but its backend may be listed a moment longer (it ends on its own).
        eventually(lambda: len(worker_backends(db)) == 1, timeout=10, what="the worker's one connection")
        kept = worker_backends(db)
        save_and_relay(system, db, "second")
        eventually(lambda: worker_backends(db) == kept, timeout=10, what="the same connection, not a new one")

        db.execute("SELECT pg_terminate_backend(%s)", kept)  # the database drops it (a restart, a failover)
        eventually(lambda: worker_backends(db) == [], timeout=10, what="the connection to end")
        save_and_relay(system, db, "third")  # the next relay opens a new one instead of failing
        eventually(lambda: len(worker_backends(db)) == 1, timeout=10, what="the worker's new connection")
        assert worker_backends(db) != kept
    assert "OperationalError" not in system.log("worker") and "InterfaceError" not in system.log("worker")
