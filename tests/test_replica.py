"""Applying events on a client: idempotent, ordered by version, tombstones, identity by master key."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model

from reactive.events import Event, decode
from reactive.replica import ReplicaState, apply

pytestmark = pytest.mark.django_db
User = get_user_model()


def ev(action: str, key: str, version: int, **data: object) -> Event:
    return Event(model="auth.user", action=action, key=key, version=version, data=data, changed=tuple(data))  # type: ignore[arg-type]


def names() -> list[tuple[str, str]]:
    return sorted(User.objects.values_list("username", "first_name"))


def test_insert_update_delete() -> None:
    assert apply(ev("insert", "1", 10, username="alice", first_name="Alice")).status == "applied"
    assert apply(ev("update", "1", 11, first_name="Alicia")).status == "applied"
    assert names() == [("alice", "Alicia")]
    assert not User.objects.get(username="alice").has_usable_password()
    assert apply(ev("delete", "1", 12)).status == "applied"
    assert names() == []
    assert ReplicaState.objects.get(key="1").deleted


def test_duplicates_and_older_versions_are_skipped() -> None:
    apply(ev("insert", "1", 10, username="alice", first_name="Alice"))
    apply(ev("update", "1", 12, first_name="New"))
    assert apply(ev("update", "1", 11, first_name="Old")).status == "stale"
    assert apply(ev("update", "1", 12, first_name="New")).status == "stale"
    assert names() == [("alice", "New")]


def test_tombstone_blocks_a_late_update_but_not_a_newer_insert() -> None:
    apply(ev("insert", "1", 10, username="alice", first_name="Alice"))
    apply(ev("delete", "1", 12))
    assert apply(ev("update", "1", 11, first_name="Ghost")).status == "stale"
    assert names() == []
    assert apply(ev("insert", "1", 13, username="alice", first_name="Back")).status == "applied"
    assert names() == [("alice", "Back")]


def test_update_for_an_unknown_key_creates_the_user() -> None:
    assert apply(ev("update", "9", 5, username="zoe", first_name="Zoe")).status == "applied"
    assert names() == [("zoe", "Zoe")]


def test_identity_is_the_master_key_so_renames_propagate() -> None:
    apply(ev("insert", "1", 10, username="bob", first_name="Bob"))
    pk = User.objects.get(username="bob").pk
    apply(ev("update", "1", 11, username="robert"))
    assert User.objects.get(pk=pk).username == "robert"


def test_a_username_held_by_another_key_fails_until_that_rename_arrives() -> None:
    apply(ev("insert", "1", 10, username="bob"))
    apply(ev("insert", "2", 11, username="tmp"))
    outcome = apply(
        ev("update", "2", 13, username="bob")
    )  # master renamed 1 away first (v12), not applied yet
    assert outcome.status == "failed" and "held by key 1" in outcome.error
    apply(ev("update", "1", 12, username="robert"))
    assert apply(ev("update", "2", 13, username="bob")).status == "applied"
    assert sorted(User.objects.values_list("username", flat=True)) == ["bob", "robert"]


def test_an_unlinked_local_user_is_adopted() -> None:
    local = User.objects.create_user("carol")
    apply(ev("insert", "3", 10, username="carol", first_name="Carol"))
    assert User.objects.get(pk=local.pk).first_name == "Carol"


def test_bad_values_fail_without_touching_anything() -> None:
    outcome = apply(ev("insert", "4", 10, username="dan", is_active="yes"))
    assert outcome.status == "failed" and "is_active" in outcome.error
    assert names() == [] and not ReplicaState.objects.exists()


def test_untracked_fields_in_data_are_ignored() -> None:
    apply(ev("insert", "5", 10, username="erin", password="hash!", is_superuser=True))
    user = User.objects.get(username="erin")
    assert not user.is_superuser and not user.has_usable_password()


def test_legacy_messages_apply_by_username_in_sent_order() -> None:
    def legacy(action: int, stamp: int, **user: object) -> Event:
        return decode(
            json.dumps({"user": {"username": "leo", **user}, "action": action}), sent_timestamp=stamp
        )

    assert apply(legacy(0, 1000, first_name="Leo")).status == "applied"
    assert apply(legacy(1, 3000, first_name="Leon")).status == "applied"
    assert apply(legacy(1, 2000, first_name="Old")).status == "stale"
    assert names() == [("leo", "Leon")]
    assert apply(legacy(2, 4000)).status == "applied"
    assert names() == []


def test_a_batch_reads_its_keys_once_and_then_writes_only() -> None:
    """Ten updates cost two reads for the batch and four statements each (savepoint, user, state, release)."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from reactive.replica import apply_batch

    with transaction.atomic():
        apply_batch([ev("insert", str(k), 10, username=f"u{k}") for k in range(10)])
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        outcomes = apply_batch([ev("update", str(k), 11, first_name=f"F{k}") for k in range(10)])
    assert [o.status for o in outcomes] == ["applied"] * 10
    assert len(queries) <= 2 + 4 * 10 + 2  # the reads, the events, the transaction itself
    assert names() == [(f"u{k}", f"F{k}") for k in range(10)]


def test_a_replayed_event_that_changes_nothing_writes_no_user_row() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    apply(ev("insert", "1", 10, username="alice", first_name="Alice"))
    with CaptureQueriesContext(connection) as queries:
        assert apply(ev("update", "1", 11, username="alice", first_name="Alice")).status == "applied"
    assert not [q for q in queries if "auth_user" in q["sql"] and q["sql"].startswith("UPDATE")]
    assert ReplicaState.objects.get(key="1").version == 11


def test_a_failed_event_in_a_batch_leaves_the_next_one_of_its_key_a_true_picture() -> None:
    """The failed event's savepoint rolls back what it did; the batch must not keep its view of it."""
    from django.db import transaction

    from reactive.replica import apply_batch

    apply(ev("insert", "1", 10, username="bob"))
    apply(ev("insert", "2", 11, username="tmp", first_name="Tim"))
    with transaction.atomic():
        outcomes = apply_batch(
            [
                ev("update", "2", 12, username="bob", first_name="Changed"),  # bob is key 1's: refused
                ev("update", "2", 13, username="tmp2"),
            ]
        )
    assert [o.status for o in outcomes] == ["failed", "applied"]
    assert User.objects.get(username="tmp2").first_name == "Tim"  # not the failed event's "Changed"
    assert ReplicaState.objects.get(key="2").version == 13


@pytest.mark.django_db(transaction=True)
def test_apply_outside_any_transaction_opens_its_own() -> None:
    """Scripts and the DLQ tools call apply() bare; its reads lock rows, which needs a transaction
    (PostgreSQL refuses SELECT ... FOR UPDATE in autocommit)."""
    assert apply(ev("insert", "1", 10, username="alice")).status == "applied"
    assert apply(ev("update", "1", 11, first_name="Al")).status == "applied"
    assert names() == [("alice", "Al")]


def test_a_legacy_delete_and_a_keyed_update_of_one_user_in_one_batch() -> None:
    """The legacy delete removes the row by username; the keyed state still pointing at it must not
    hand the batch a row that no longer exists."""
    from django.db import transaction

    from reactive.replica import apply_batch

    apply(ev("insert", "17", 10, username="bob", first_name="Bob"))
    legacy_delete = decode(json.dumps({"user": {"username": "bob"}, "action": 2}), sent_timestamp=5000)
    with transaction.atomic():
        outcomes = apply_batch([legacy_delete, ev("update", "17", 11, username="bob", first_name="Bob")])
    assert [o.status for o in outcomes] == ["applied", "applied"]
    assert names() == [("bob", "Bob")]  # the row is back, not just reported so
