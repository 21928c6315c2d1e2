"""`reactive sync` through Typer's CliRunner: outbox rows for one client, relayed straight to its queue."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from typer.testing import CliRunner

from cli.main import app
from reactive.outbox import OutboxEvent
from reactive.transport.sqs import SqsTransport
from tests.test_dlq import take_all, total

runner = CliRunner()
pytestmark = pytest.mark.django_db
User = get_user_model()


def events(sqs: SqsTransport, client: str) -> dict[str, dict]:
    queue = f"{sqs.topic_name.removesuffix('-users')}-{client}"
    return {e["key"]: e for e in (json.loads(m.body) for m in take_all(sqs, queue))}


def test_sync_sends_every_synced_user_to_that_client_only(sqs: SqsTransport) -> None:
    alice = User.objects.create_user("alice", "alice@example.com", first_name="Alice")
    bob = User.objects.create_user("bob", first_name="Bob")
    User.objects.create_user("root", is_staff=True)  # staff stay on the master

    result = runner.invoke(app, ["sync", "--client", "alpha", "--batch", "1", "--json"])

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (
        summary["examined"],
        summary["updates"],
        summary["deletes"],
        summary["sent"],
        summary["pending"],
    ) == (
        3,
        2,
        0,
        2,
        0,
    )
    got = events(sqs, "alpha")
    assert set(got) == {str(alice.pk), str(bob.pk)}
    rows = {r.key: r for r in OutboxEvent.objects.filter(target="alpha")}
    assert got[str(alice.pk)]["version"] == rows[str(alice.pk)].id  # the version is the outbox row id
    assert got[str(alice.pk)]["data"]["email"] == "alice@example.com"
    assert got[str(alice.pk)]["data"]["first_name"] == "Alice"
    assert "password" not in got[str(alice.pk)]["data"]
    assert all(r.sent_at is not None for r in rows.values())
    assert total(sqs, f"{sqs.topic_name.removesuffix('-users')}-beta") == 0


# Sequences restart at 1: prune walks every key ever issued, and on PostgreSQL a rollback does not give
# back the keys earlier tests took (a delete sent for each of them, hundreds, and 17 s).
@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_prune_sends_deletes_for_keys_the_master_lacks(sqs: SqsTransport) -> None:
    users = [User.objects.create_user(f"user{i}") for i in range(4)]
    gone = users[1]
    gone_key = str(gone.pk)
    gone.delete()
    User.objects.filter(pk=users[3].pk).update(is_staff=True)  # no longer synced

    result = runner.invoke(app, ["sync", "--client", "beta", "--prune", "--json"])

    assert result.exit_code == 0, result.output
    got = events(sqs, "beta")
    assert got[gone_key]["action"] == "delete"
    assert got[str(users[3].pk)]["action"] == "delete"
    assert got[str(users[0].pk)]["action"] == "update" and got[str(users[2].pk)]["action"] == "update"
    assert all(int(k) <= users[3].pk for k in got)


def test_table_output_and_a_wrong_client(sqs: SqsTransport) -> None:
    User.objects.create_user("alice")
    result = runner.invoke(app, ["sync", "--client", "alpha"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "sync to alpha" in result.stdout
    wrong = runner.invoke(app, ["sync", "--client", "gamma"])
    assert wrong.exit_code == 1 and "client 'gamma': is the name right" in str(wrong.exception)
