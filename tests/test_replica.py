"""Applying events on a client: idempotent, ordered by version, tombstones, identity by master key."""

from __future__ import annotations

import json
from typing import Any

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


def usernames() -> list[str]:
    return sorted(User.objects.values_list("username", flat=True))


def test_a_username_held_by_an_older_version_of_another_key_is_lent_until_its_rename_arrives() -> None:
    apply(ev("insert", "1", 10, username="bob"))
    apply(ev("insert", "2", 11, username="tmp"))
    assert apply(ev("update", "2", 13, username="bob")).status == "applied"  # 1 was renamed first (v12)
    assert usernames() == ["bob", "~displaced-1"]
    apply(ev("update", "1", 12, username="robert"))
    assert usernames() == ["bob", "robert"]


def test_an_out_of_date_username_waits_under_a_placeholder_for_its_own_rename() -> None:
    apply(ev("insert", "1", 20, username="alice"))  # alice since v20: key 2's alice (v15) is older
    assert apply(ev("insert", "2", 15, username="alice", first_name="Al")).status == "applied"
    assert usernames() == ["alice", "~displaced-2"]
    apply(ev("update", "2", 17, username="amy"))
    assert usernames() == ["alice", "amy"] and User.objects.get(username="amy").first_name == "Al"


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
@pytest.mark.parametrize("one_batch", [True, False])
def test_a_swap_of_usernames_sent_by_sync_converges(order: tuple[int, int], one_batch: bool) -> None:
    from reactive.replica import apply_batch

    apply(ev("insert", "1", 1, username="alice"))
    apply(ev("insert", "2", 2, username="bob"))
    swap = [ev("update", "1", 100, username="bob"), ev("update", "2", 101, username="alice")]
    chosen = [swap[i] for i in order]
    outcomes = apply_batch(chosen) if one_batch else [apply(event) for event in chosen]
    assert [o.status for o in outcomes] == ["applied", "applied"]
    assert sorted(ReplicaState.objects.values_list("key", "local_pk")) == [
        ("1", str(User.objects.get(username="bob").pk)),
        ("2", str(User.objects.get(username="alice").pk)),
    ]


def test_a_three_way_cycle_delivered_newest_first_converges() -> None:
    for key, name in (("1", "a"), ("2", "b"), ("3", "c")):
        apply(ev("insert", key, int(key), username=name))
    events = [ev("update", "3", 12, username="a"), ev("update", "2", 11, username="c")]
    events.append(ev("update", "1", 10, username="b"))
    assert [apply(event).status for event in events] == ["applied"] * 3
    assert [User.objects.get(username=n).first_name for n in "abc"] == ["", "", ""]
    by_key = dict(ReplicaState.objects.values_list("key", "local_pk"))
    assert (
        User.objects.get(pk=by_key["1"]).username == "b" and User.objects.get(pk=by_key["3"]).username == "a"
    )


def test_an_unlinked_local_user_is_adopted() -> None:
    local = User.objects.create_user("carol", password="local-secret")
    apply(ev("insert", "3", 10, username="carol", first_name="Carol"))
    adopted = User.objects.get(pk=local.pk)
    assert adopted.first_name == "Carol" and not adopted.has_usable_password()  # it signs in by link only


@pytest.mark.parametrize("privilege", ["is_staff", "is_superuser"])
def test_a_local_staff_user_is_never_adopted(privilege: str) -> None:
    User.objects.create_user("admin", password="local-secret", **{privilege: True})
    outcome = apply(ev("insert", "4", 10, username="admin"))
    assert outcome.status == "failed" and "held by a local staff user" in outcome.error
    assert User.objects.get(username="admin").has_usable_password()


def test_values_longer_than_this_client_allows_fail_cleanly() -> None:
    outcome = apply(ev("insert", "5", 10, username="dan", first_name="x" * 151))
    assert outcome.status == "failed" and "more than this client's 150" in outcome.error
    assert "NUL" in apply(ev("insert", "5", 11, username="dan", last_name="a\x00b")).error
    assert apply(ev("insert", "5", 12, username="dan")).status == "applied"


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

    apply(legacy("insert", "root", 5))  # the prototype's replica of root: key 2 waits for its rename
    apply(ev("insert", "2", 11, username="tmp", first_name="Tim"))
    with transaction.atomic():
        outcomes = apply_batch(
            [
                ev("update", "2", 12, username="root", first_name="Changed"),  # refused
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


def test_a_login_for_one_master_user_never_finds_a_row_another_key_has_linked() -> None:
    from client_site.web.profiles import replica_user

    row = User.objects.create_user("alice")
    ReplicaState.objects.create(model="auth.user", key="username:alice", version=5, local_pk=str(row.pk))
    assert replica_user("9", "alice") == row  # a legacy replica, not linked to any master key yet
    ReplicaState.objects.create(model="auth.user", key="1", version=10, local_pk=str(row.pk))
    assert replica_user("9", "alice") is None  # now master user 1's row: never user 9's
    assert replica_user("1", "alice") == row
    ReplicaState.objects.filter(key="1").delete()
    User.objects.filter(pk=row.pk).update(username="alicia")
    assert replica_user("9", "alice") is None  # the legacy state points at a row renamed since


def legacy(action: str, username: str, version: int, **data: object) -> Event:
    return Event(
        model="auth.user",
        action=action,  # type: ignore[arg-type]
        key=username,
        version=version,
        data={"username": username, **data},
        changed=(),
        key_field="username",
    )


def test_legacy_events_never_take_over_or_delete_a_local_staff_account() -> None:
    from client_site.web.profiles import replica_user

    admin = User.objects.create_user("admin", password="local-secret", is_superuser=True)
    assert "held by a local staff user" in apply(legacy("insert", "admin", 5, first_name="Ad")).error
    apply(legacy("delete", "admin", 6))
    kept = User.objects.get(pk=admin.pk)
    assert kept.has_usable_password() and kept.is_superuser and kept.first_name == ""
    ReplicaState.objects.update_or_create(  # as a legacy replica linking it would
        model="auth.user",
        key="username:admin",
        defaults={"version": 7, "local_pk": str(admin.pk), "deleted": False},
    )
    assert replica_user("42", "admin") is None


def test_a_legacy_delete_never_removes_a_row_a_master_key_links() -> None:
    apply(ev("insert", "1", 10, username="erin"))
    apply(legacy("delete", "erin", 11))
    assert usernames() == ["erin"]


def test_the_placeholder_prefix_is_refused_as_a_master_username() -> None:
    outcome = apply(ev("insert", "7", 10, username="~displaced-1"))
    assert outcome.status == "failed" and "reserved" in outcome.error


def test_a_keyed_event_takes_over_the_prototypes_replica_of_its_username() -> None:
    from client_site.web.profiles import replica_user

    assert apply(legacy("insert", "fay", 1_700_000_000_000, first_name="Fay")).status == "applied"
    row = User.objects.get(username="fay")
    assert apply(ev("insert", "12", 40, username="fay", first_name="Faye")).status == "applied"
    taken = User.objects.get(pk=row.pk)
    assert taken.first_name == "Faye" and usernames() == ["fay"]
    # Unusable already, the password is kept: a new one would sign fay's open sessions out.
    assert taken.password == row.password and not taken.has_usable_password()
    assert ReplicaState.objects.get(key="username:fay").deleted
    assert replica_user("12", "fay") == row
    assert apply(legacy("update", "fay", 1_700_000_000_001, first_name="Old")).status == "failed"


def test_a_local_admin_an_older_version_adopted_is_never_taken_over_or_signed_into() -> None:
    from client_site.web.profiles import replica_user

    admin = User.objects.create_user("gus", password="local-secret", is_superuser=True)
    ReplicaState.objects.create(model="auth.user", key="username:gus", version=5, local_pk=str(admin.pk))
    outcome = apply(ev("insert", "13", 50, username="gus"))
    assert outcome.status == "failed" and "held by a local staff user" in outcome.error
    ReplicaState.objects.create(model="auth.user", key="14", version=60, local_pk=str(admin.pk))
    assert replica_user("14", "gus") is None and User.objects.get(pk=admin.pk).has_usable_password()


def test_an_event_for_another_model_is_refused_with_why() -> None:
    """Applying is written for users: an event naming any other installed model (a group, the sessions)
    fails on its own, saying so, and writes nothing."""
    from django.contrib.auth.models import Group

    event = Event(model="auth.group", action="insert", key="7", version=3, data={"name": "ops"})
    outcome = apply(event)
    assert outcome.status == "failed" and "'auth.group' is not replicated on this client" in outcome.error
    assert not Group.objects.exists()


def test_a_rename_onto_a_local_accounts_name_applies_all_but_the_name_until_it_frees_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refused whole, such a rename refused every later event of that user too: disabled on the master,
    bob stayed active here."""
    import logging

    from reactive import replica

    local = User.objects.create_user("ops", password="local-secret", first_name="Local")
    apply(ev("insert", "5", 1, username="bob", first_name="Bob", is_active=True))
    bob = User.objects.get(username="bob")
    held_before = replica.held_renames
    with caplog.at_level(logging.WARNING, logger="reactive.replica"):
        renamed = apply(ev("update", "5", 2, username="ops", first_name="Robert", is_active=True))
        disabled = apply(ev("update", "5", 3, username="ops", first_name="Robert", is_active=False))
    assert [renamed.status, disabled.status] == ["applied", "applied"]
    bob.refresh_from_db()
    assert (bob.username, bob.first_name, bob.is_active) == ("bob", "Robert", False)
    assert disabled.profile is not None and disabled.profile["username"] == "bob"
    local.refresh_from_db()
    assert (local.username, local.first_name, local.is_active) == ("ops", "Local", True)
    assert local.check_password("local-secret")
    assert ReplicaState.objects.get(key="5").local_pk == str(bob.pk)
    warnings = [r.getMessage() for r in caplog.records if r.name == "reactive.replica"]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)  # one line an event
    assert "key 5 v2" in warnings[0] and "'ops'" in warnings[0] and "kept as 'bob'" in warnings[0]
    assert replica.held_renames == held_before + 2

    local.username = "ops-local"
    local.save()
    assert (
        apply(ev("update", "5", 4, username="ops", first_name="Robert", is_active=False)).status == "applied"
    )
    bob.refresh_from_db()
    assert (bob.username, bob.is_active) == ("ops", False)
    assert User.objects.get(pk=local.pk).username == "ops-local"


def test_a_rename_onto_a_deleted_local_accounts_name_lands_with_the_next_event() -> None:
    User.objects.create_user("ops")
    apply(ev("insert", "5", 1, username="bob"))
    apply(ev("update", "5", 2, username="ops"))
    assert usernames() == ["bob", "ops"]
    User.objects.filter(username="ops").delete()
    assert apply(ev("update", "5", 3, username="ops", first_name="B")).status == "applied"
    assert names() == [("ops", "B")]


@pytest.mark.parametrize("privilege", ["is_staff", "is_superuser"])
def test_a_rename_onto_a_local_staff_accounts_name_never_touches_that_account(privilege: str) -> None:
    admin = User.objects.create_user("admin", password="local-secret", **{privilege: True})
    apply(ev("insert", "5", 1, username="bob"))
    assert apply(ev("update", "5", 2, username="admin", is_active=False)).status == "applied"
    assert User.objects.get(pk=admin.pk).check_password("local-secret")
    assert User.objects.get(pk=admin.pk).is_active and not User.objects.get(username="bob").is_active


def test_through_the_listener_a_held_rename_and_a_disable_are_acked_not_left_for_the_dlq(memory) -> None:  # type: ignore[no-untyped-def]
    from reactive.events import encode
    from reactive.listener import Listener
    from reactive.transport.base import OutgoingMessage

    User.objects.create_user("ops")
    listener = Listener("alpha", memory, wait=0, notify=lambda changes: None)
    events = [
        ev("insert", "5", 1, username="bob", is_active=True),
        ev("update", "5", 2, username="ops", is_active=True),
        ev("update", "5", 3, username="ops", is_active=False),
    ]
    memory.publish([OutgoingMessage(id=str(i), body=encode(e)) for i, e in enumerate(events)])
    totals = listener.run(once=True)
    assert (totals.applied, totals.failed, totals.acked) == (3, 0, 3)
    assert not User.objects.get(username="bob").is_active and User.objects.get(username="ops").is_active
    assert memory.depth(f"{listener.queue}-dlq").visible == 0


def test_a_held_name_is_kept_and_given_to_the_replica_once_the_local_account_lets_it_go() -> None:
    """The user may never change again on the master: the held name is kept on the replica's state, and
    given to it once no one holds it here (the local account renamed or deleted); the profile to push is
    returned. Until then nothing moves; an event that brings the name itself ends the hold."""
    from reactive.replica import apply_held_renames

    local = User.objects.create_user("ops")
    apply(ev("insert", "5", 1, username="bob"))
    apply(ev("update", "5", 2, username="ops", first_name="Robert"))
    assert ReplicaState.objects.get(key="5").held_username == "ops"
    assert apply_held_renames() == []  # still the local account's
    local.username = "ops-local"
    local.save()
    renamed = apply_held_renames()
    bob = User.objects.get(first_name="Robert")
    assert bob.username == "ops" and ReplicaState.objects.get(key="5").held_username == ""
    assert renamed == [(str(bob.pk), {**renamed[0][1], "username": "ops", "key": "5", "version": 2})]
    assert apply_held_renames() == []

    User.objects.create_user("carol-local")
    apply(ev("insert", "6", 3, username="carol"))
    apply(ev("update", "6", 4, username="carol-local"))
    assert ReplicaState.objects.get(key="6").held_username == "carol-local"
    apply(ev("update", "6", 5, username="caroline"))  # renamed again on the master: the hold ends
    assert ReplicaState.objects.get(key="6").held_username == ""
    assert User.objects.filter(username="caroline").exists()


def test_a_hold_of_an_event_that_failed_is_not_left_to_a_later_event_of_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """v5 holds "ops" and then fails (its savepoint rolls back); v6 renames to "carol" in the same batch:
    the state must not keep v5's hold, or the pass would rename the replica to "ops" later."""
    from django.db import IntegrityError

    from reactive.replica import apply_batch

    User.objects.create_user("ops")
    apply(ev("insert", "5", 1, username="bob"))
    real_save = User.save

    def failing_once(self: Any, *args: Any, **kwargs: Any) -> None:
        if self.first_name == "Boom":
            raise IntegrityError("a unique email, say")
        real_save(self, *args, **kwargs)

    monkeypatch.setattr(User, "save", failing_once)
    outcomes = apply_batch(
        [ev("update", "5", 5, username="ops", first_name="Boom"), ev("update", "5", 6, username="carol")]
    )
    assert [o.status for o in outcomes] == ["failed", "applied"]
    assert ReplicaState.objects.get(key="5").held_username == ""
    assert User.objects.filter(username="carol").exists()


def test_a_held_name_that_cannot_be_given_leaves_the_others_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """One rename of the pass fails (the name taken between the look and the write, a case-insensitive
    uniqueness): it stays held, the others go through, nothing is rolled back with it."""
    from reactive.replica import apply_held_renames

    for name in ("ops", "dev"):
        User.objects.create_user(name)
    apply(ev("insert", "5", 1, username="bob"))
    apply(ev("insert", "6", 2, username="eve"))
    apply(ev("update", "5", 3, username="ops"))
    apply(ev("update", "6", 4, username="dev"))
    User.objects.filter(username__in=["ops", "dev"]).delete()
    real_save = User.save

    def taken(self: Any, *args: Any, **kwargs: Any) -> None:
        if self.username == "ops" and not User.objects.filter(username="ops").exists():
            real_save(User(username="ops"))  # taken between the look and the write: a real violation
        real_save(self, *args, **kwargs)

    monkeypatch.setattr(User, "save", taken)
    renamed = apply_held_renames()
    assert [profile["username"] for _, profile in renamed] == ["dev"]
    assert ReplicaState.objects.get(key="5").held_username == "ops"
    assert ReplicaState.objects.get(key="6").held_username == ""


@pytest.mark.django_db(transaction=True)
def test_a_listener_of_the_previous_release_still_inserts_states_after_the_migration() -> None:
    """During a rolling deploy the old listeners insert states without the new column: the database gives
    it its default (db_default), or every new user would fail there, to the DLQ in the end."""
    from django.db import connection
    from django.utils import timezone

    table = ReplicaState._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (model, key, version, deleted, local_pk, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            ["auth.user", "77", 1, False, None, timezone.now()],
        )
    assert ReplicaState.objects.get(key="77").held_username == ""
