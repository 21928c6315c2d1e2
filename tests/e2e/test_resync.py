"""Resync and verify across real sites: `verify` (both databases) finds what lost events left wrong,
`sync --prune` (master) repairs it through the client's queue and its listener, and `verify` agrees."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.sites import VENV_BIN, Deployment

pytestmark = pytest.mark.e2e

LOSE_THESE_CHANGES = """
from django.contrib.auth import get_user_model
from django.utils import timezone
from reactive.outbox import OutboxEvent
U = get_user_model()
newest = OutboxEvent.objects.order_by("-id").values_list("id", flat=True).first()
U.objects.get(username="dave").delete()
alice = U.objects.get(username="alice"); alice.username = "alicia"; alice.save()
U.objects.create_user("erin", "erin@example.com", "pw", first_name="Erin")
# The relay "sent" them, and SQS lost them: nobody will ever deliver these three events.
OutboxEvent.objects.filter(id__gt=newest).update(sent_at=timezone.now())
print(newest)
"""


def reactive(system: Deployment, site: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "reactive"), *args],
        env=system.env(site, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=180,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}\n{done.stderr}"
    return done.stdout


def verify(system: Deployment, *extra: str) -> subprocess.CompletedProcess[str]:
    return reactive(
        system, "master", "verify", "--client", "alpha", "--client-db", system.url("alpha"), *extra
    )


def drain(system: Deployment) -> None:
    ok(reactive(system, "alpha", "listen", "--client", "alpha", "--once", "--wait", "1"))


def test_verify_finds_lost_changes_and_sync_prune_repairs_them(deployment: Deployment) -> None:
    deployment.python(
        "master",
        """
        from django.contrib.auth import get_user_model
        U = get_user_model()
        for name in ("alice", "bob", "carol", "dave"):
            U.objects.create_user(name, f"{name}@example.com", "pw", first_name=name.title())
        U.objects.create_user("root", "root@example.com", "pw", is_staff=True)
        """,
        REACTIVE_RELAY="off",  # no worker: the outbox keeps them, the sync relays them
    )

    first = json.loads(ok(reactive(deployment, "master", "sync", "--client", "alpha", "--json")))
    assert (first["updates"], first["deletes"], first["pending"]) == (4, 0, 0)
    drain(deployment)
    assert "alpha matches the master" in ok(verify(deployment))

    deployment.python("master", LOSE_THESE_CHANGES, REACTIVE_RELAY="off")
    broken = verify(deployment, "--json")
    assert broken.returncode == 1
    report = json.loads(broken.stdout)
    found = {(d["kind"], d["username"]) for d in report["differences"]}
    assert found == {("missing", "erin"), ("extra", "dave"), ("stale", "alicia")}
    stale = next(d for d in report["differences"] if d["kind"] == "stale")
    assert "username: 'alice' != 'alicia'" in stale["detail"] and "version" in stale["detail"]
    table = verify(deployment).stdout
    assert "alpha differs from the master" in table and "1 missing, 1 extra, 1 stale" in table

    repaired = json.loads(
        ok(reactive(deployment, "master", "sync", "--client", "alpha", "--prune", "--json"))
    )
    assert repaired["updates"] == 4 and repaired["deletes"] >= 2  # dave, and root (staff: never synced)
    drain(deployment)

    assert json.loads(ok(verify(deployment, "--json")))["ok"] is True
    names = deployment.python(
        "alpha",
        """
        from django.contrib.auth import get_user_model
        print(sorted(get_user_model().objects.values_list("username", flat=True)))
        """,
    )
    assert names.strip() == "['alicia', 'bob', 'carol', 'erin']"


# A master database restored from a backup taken before any event: its outbox sequence starts over.
RESTORE_AN_OLD_BACKUP = """
from django.db import connection
from reactive.outbox import OutboxEvent
OutboxEvent.objects.all().delete()
with connection.cursor() as cursor:
    if connection.vendor == "sqlite":
        cursor.execute("UPDATE sqlite_sequence SET seq = 0 WHERE name = 'reactive_outboxevent'")
    else:
        cursor.execute("SELECT setval(pg_get_serial_sequence('reactive_outboxevent', 'id'), 1, false)")
"""


def test_a_restored_master_database_is_found_and_mended_as_the_operations_guide_says(
    system: Deployment,
) -> None:
    """Versions are outbox ids: a restored master hands out ids the clients have seen, and every change, a
    sync's too, is skipped there as stale. `verify` says so; the documented remedy mends it."""
    system.python(
        "master",
        """
        from django.contrib.auth import get_user_model
        for name in ("alice", "bob"):
            get_user_model().objects.create_user(name, f"{name}@example.com", "pw", first_name=name.title())
        """,
        REACTIVE_RELAY="off",
    )
    ok(reactive(system, "master", "sync", "--client", "alpha"))
    drain(system)
    system.python("master", RESTORE_AN_OLD_BACKUP, REACTIVE_RELAY="off")
    system.python(
        "master",
        """
        from django.contrib.auth import get_user_model
        alice = get_user_model().objects.get(username="alice"); alice.first_name = "Alicia"; alice.save()
        """,
        REACTIVE_RELAY="off",
    )
    ok(reactive(system, "master", "sync", "--client", "alpha"))  # the usual mend: skipped as stale
    drain(system)

    behind = verify(system, "--json")
    assert behind.returncode == 1
    report = json.loads(behind.stdout)
    assert report["sequence_behind"] is True and report["outbox_sequence"] < report["replica_top_version"]
    assert "was the master's database restored from a backup?" in verify(system).stdout

    # The documented remedy: verify moves the sequence past the client's versions, then a sync.
    top = report["replica_top_version"]
    assert f"advanced it to {top}" in verify(system, "--advance-sequence").stdout
    again = json.loads(verify(system, "--advance-sequence", "--json").stdout)  # done: nothing moves
    assert again["advanced_to"] is None and again["outbox_sequence"] == top and not again["sequence_behind"]
    ok(reactive(system, "master", "sync", "--client", "alpha", "--prune"))
    drain(system)
    assert json.loads(ok(verify(system, "--json")))["ok"] is True


CHURN = """
import time
import django
django.setup()
from django.contrib.auth import get_user_model
from reactive.outbox import OutboxEvent
U = get_user_model()
# Change users until the sync has started writing, and 20 changes more (or a minute has passed).
deadline, i, after_sync = time.monotonic() + 60, 0, 0
while after_sync < 20 and time.monotonic() < deadline:
    user = U.objects.order_by("?").first()
    user.first_name = f"churn{i}"; user.save()
    if i % 3 == 0:
        U.objects.create_user(f"new{i}", f"new{i}@example.com", "pw")
    if i % 10 == 9:
        U.objects.filter(username__startswith="new").order_by("?").first().delete()
    if after_sync or OutboxEvent.objects.filter(target="alpha").exists():
        after_sync += 1
    i += 1
print("changes", i, "after the sync began", after_sync, flush=True)
"""


@pytest.fixture(params=["sqlite", "postgres"])
def system(request: pytest.FixtureRequest) -> Deployment:
    return request.getfixturevalue("deployment" if request.param == "sqlite" else "pg_deployment")


def test_a_sync_with_prune_during_live_traffic_converges(system: Deployment) -> None:
    """On PostgreSQL the live saves and the sync really run at once (row locks, SKIP LOCKED, the table
    lock that holds inserts off while the key space is read); SQLite serializes every writer."""
    import sys

    from tests.support.services import eventually

    system.python(
        "master",
        """
        from django.contrib.auth import get_user_model
        for i in range(20):
            get_user_model().objects.create_user(f"user{i}", f"user{i}@example.com", "pw")
        """,
    )
    system.start_worker()
    system.start_listener("alpha", "--wait", "1")
    churn = system.start("master", [sys.executable, "-c", CHURN], "churn")

    synced = json.loads(
        ok(reactive(system, "master", "sync", "--client", "alpha", "--prune", "--batch", "4", "--json"))
    )
    assert synced["pending"] == 0 and synced["updates"] >= 20

    assert churn.wait(120) == 0, system.log("churn")
    assert "after the sync began 20" in system.log("churn")
    eventually(lambda: verify(system).returncode == 0, timeout=90, interval=1, what="alpha converges")
