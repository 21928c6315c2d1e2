"""Change capture on the master: which saves emit which events, in the same transaction, with no extra SELECT."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import connection, models, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reactive import capture, outbox
from reactive.outbox import OutboxEvent

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("captured")]
User = get_user_model()


def events() -> list[tuple[str, str, list[str]]]:
    return list(OutboxEvent.objects.order_by("id").values_list("action", "key", "changed"))


def test_create_update_delete_emit_insert_update_delete() -> None:
    user = User.objects.create_user("alice", "a@example.com", "pw", first_name="Alice")
    user.first_name = "Alicia"
    user.save()
    key = str(user.pk)
    user.delete()
    assert [(a, k) for a, k, _ in events()] == [("insert", key), ("update", key), ("delete", key)]
    assert events()[1][2] == ["first_name"]


def test_versions_increase_per_key() -> None:
    user = User.objects.create_user("bob", first_name="Bob")
    for name in ("B1", "B2", "B3"):
        user.first_name = name
        user.save()
    versions = [row.to_event().version for row in OutboxEvent.objects.order_by("id")]
    assert versions == sorted(versions) and len(set(versions)) == 4


def test_untracked_changes_emit_nothing() -> None:
    user = User.objects.create_user("carol", first_name="Carol")
    before = OutboxEvent.objects.count()
    user = User.objects.get(pk=user.pk)
    user.set_password("new-secret")
    user.save()
    user.last_login = timezone.now()
    user.save()
    user.save()  # nothing changed at all
    assert OutboxEvent.objects.count() == before


def test_a_changed_save_runs_no_select_on_the_user_table() -> None:
    user = User.objects.create_user("dora", first_name="Dora")
    user = User.objects.get(pk=user.pk)
    user.first_name = "Dorothy"
    with CaptureQueriesContext(connection) as queries:
        user.save()
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")]
    assert selects == []
    assert OutboxEvent.objects.filter(action="update", key=str(user.pk)).count() == 1


def test_no_event_carries_the_password_hash_or_last_login() -> None:
    user = User.objects.create_user("eve", "e@example.com", "s3cret-pw", first_name="Eve")
    user.last_login = timezone.now()
    user.first_name = "Evelyn"
    user.save()
    for row in OutboxEvent.objects.all():
        assert "password" not in row.data and "last_login" not in row.data
        assert user.password not in str(row.data)
    assert set(OutboxEvent.objects.get(action="insert").data) == set(capture.DEFAULT_USER_FIELDS)


def test_rolled_back_transaction_emits_nothing(django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(RuntimeError), transaction.atomic():
        User.objects.create_user("frank", first_name="Frank")
        raise RuntimeError("boom")
    assert OutboxEvent.objects.count() == 0
    assert callbacks == []


def test_one_relay_is_requested_per_transaction(django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        for i in range(5):
            User.objects.create_user(f"user{i}")
    assert OutboxEvent.objects.count() == 5
    assert [c for c in callbacks if c is outbox._request_relay] == [outbox._request_relay]


def test_staff_flip_deletes_then_reinserts_on_clients() -> None:
    user = User.objects.create_user("gina", first_name="Gina")
    user.is_staff = True
    user.save()
    user.is_staff = False
    user.first_name = "Georgina"
    user.save()
    actions = [a for a, _, _ in events()]
    assert actions == ["insert", "delete", "insert"]
    assert OutboxEvent.objects.order_by("id").last().data["first_name"] == "Georgina"  # type: ignore[union-attr]


def test_staff_users_are_never_synced() -> None:
    admin = User.objects.create_user("root", is_staff=True)
    admin.first_name = "Root"
    admin.save()
    admin.delete()
    assert events() == []


def test_deferred_tracked_field_is_read_back_only_when_needed() -> None:
    user = User.objects.create_user("hank", "h@example.com", first_name="Hank")
    partial = User.objects.only("id", "first_name").get(pk=user.pk)
    partial.first_name = "Henry"
    partial.save()
    last = OutboxEvent.objects.order_by("id").last()
    assert last is not None and last.action == "update" and last.data["first_name"] == "Henry"
    assert (last.changed, last.data["email"], last.data["username"]) == (
        ["first_name"],
        "h@example.com",
        "hank",
    )


def test_diff_is_pure() -> None:
    assert capture.diff({"a": 1, "b": 2}, {"a": 1, "b": 3}) == ("b",)
    assert capture.decide(None, {"a": 1, capture.SYNCED: False}) == (None, ())
    assert capture.decide({"a": 1, capture.SYNCED: True}, {"a": 1, capture.SYNCED: False})[0] == "delete"


def test_password_cannot_be_tracked() -> None:
    with pytest.raises(ValueError, match="never synced"):
        capture.track(User, fields=["username", "password"])


@pytest.mark.parametrize("relation", ["groups", "logentry"])
def test_only_a_models_own_columns_can_be_tracked(relation: str) -> None:
    with pytest.raises(ValueError, match=f"auth.User.{relation} is not a column of its own"):
        capture.track(User, fields=["username", relation])


def change_elsewhere(pk: int, **values: object) -> None:
    other = User.objects.get(pk=pk)
    for name, value in values.items():
        setattr(other, name, value)
    other.save()


@pytest.mark.parametrize("fields", [None, ["first_name"]])
def test_after_refresh_from_db_a_save_is_diffed_against_the_stored_values(fields: list[str] | None) -> None:
    user = User.objects.create_user("rita", first_name="Rita")
    change_elsewhere(user.pk, first_name="Margarita")
    user.refresh_from_db(fields=fields)
    user.first_name = "Rita"  # what it was first loaded with, no longer what is stored
    before = OutboxEvent.objects.count()
    user.save()
    assert events()[before:] == [("update", str(user.pk), ["first_name"])]


def test_a_partial_refresh_keeps_unsaved_changes_to_other_fields() -> None:
    user = User.objects.create_user("sam", "sam@example.com", first_name="Sam")
    user.email = "samuel@example.com"
    user.refresh_from_db(fields=["first_name"])
    before = OutboxEvent.objects.count()
    user.save()
    assert events()[before:] == [("update", str(user.pk), ["email"])]


def test_a_refresh_learns_who_is_synced_now() -> None:
    user = User.objects.create_user("tess", first_name="Tess")
    change_elsewhere(user.pk, is_staff=True)  # clients delete her
    user.refresh_from_db(fields=["is_staff"])
    user.is_staff = False
    before = OutboxEvent.objects.count()
    user.save()
    assert [action for action, _, _ in events()[before:]] == ["insert"]


def test_a_save_of_some_fields_publishes_what_is_stored_not_what_is_in_memory() -> None:
    user = User.objects.create_user("uma", "uma@example.com", first_name="Uma")
    change_elsewhere(user.pk, email="uma@elsewhere.example")
    user.last_name = "Unsaved"  # changed in memory only
    user.first_name = "Umaa"
    before = OutboxEvent.objects.count()
    user.save(update_fields=["first_name"])
    row = OutboxEvent.objects.order_by("id").last()
    assert row is not None and OutboxEvent.objects.count() == before + 1
    assert (row.changed, row.data["email"], row.data["last_name"]) == (
        ["first_name"],
        "uma@elsewhere.example",
        "",
    )
    user.save()  # now the in-memory last name (and the email it was loaded with) are written
    assert sorted(events()[-1][2]) == ["email", "last_name"]


def test_a_save_of_untracked_or_unchanged_fields_reads_nothing_and_emits_nothing() -> None:
    user = User.objects.create_user("vic", first_name="Vic")
    user = User.objects.get(pk=user.pk)
    user.last_login = timezone.now()
    user.email = "unsaved@example.com"  # not written by these saves, so no event may carry it
    before = OutboxEvent.objects.count()
    with CaptureQueriesContext(connection) as queries:
        user.save(update_fields=["last_login"])
        user.save(update_fields=["first_name", "last_login"])
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE", "UPDATE"]
    assert OutboxEvent.objects.count() == before


def test_a_save_of_some_fields_that_changes_who_is_synced() -> None:
    user = User.objects.create_user("wes", first_name="Wes")
    user.is_staff = True
    before = OutboxEvent.objects.count()
    user.save(update_fields=["is_staff"])
    assert events()[before:] == [("delete", str(user.pk), ["is_staff"])]


def test_a_deferred_instance_that_changes_nothing_tracked_reads_nothing_and_emits_nothing() -> None:
    user = User.objects.create_user("xena", first_name="Xena")
    staff = User.objects.create_user("yuri", is_staff=True)
    before = OutboxEvent.objects.count()
    with CaptureQueriesContext(connection) as queries:
        for pk in (user.pk, staff.pk):
            partial = User.objects.only("id", "is_staff", "last_login").get(pk=pk)
            partial.last_login = timezone.now()
            partial.save()
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["SELECT", "UPDATE"] * 2
    assert OutboxEvent.objects.count() == before


def test_an_instance_built_with_a_stored_key_publishes_what_is_stored() -> None:
    user = User.objects.create_user("zoe", "zoe@example.com", first_name="Zoe")
    before = OutboxEvent.objects.count()
    User(pk=user.pk, username="zoe", first_name="Zoey").save(update_fields=["first_name"])
    row = OutboxEvent.objects.order_by("id").last()
    assert row is not None and OutboxEvent.objects.count() == before + 1
    assert (row.key, row.data["first_name"], row.data["email"]) == (str(user.pk), "Zoey", "zoe@example.com")
    User(
        pk=user.pk, username="zoe", first_name="Zo", email="z@example.com", date_joined=user.date_joined
    ).save()
    assert events()[-1] == (
        "update",
        str(user.pk),
        list(capture.DEFAULT_USER_FIELDS),
    )  # nothing to diff against


def test_an_instance_built_with_a_stored_key_is_deleted_on_clients_when_it_stops_qualifying() -> None:
    user = User.objects.create_user("ann", first_name="Ann")
    before = OutboxEvent.objects.count()
    User(pk=user.pk, username="ann", is_staff=True, date_joined=user.date_joined).save(
        update_fields=["is_staff"]
    )
    other = User.objects.create_user("abe", first_name="Abe")
    mark = OutboxEvent.objects.count()
    User(pk=other.pk, is_staff=True).delete()  # built in code: its verdict says nothing about the stored row
    assert [action for action, _, _ in events()[before:]] == ["delete", "insert", "delete"]
    assert OutboxEvent.objects.count() == mark + 1


def test_a_snapshot_read_from_another_database_is_not_diffed_against() -> None:
    user = User.objects.create_user("ben", first_name="Ben")
    user = User.objects.get(pk=user.pk)
    user.__dict__[capture.SNAPSHOT_DB_ATTR] = "replica"  # as if a router had read it from a lagging replica
    before = OutboxEvent.objects.count()
    user.save()  # nothing changed here, but the primary may hold something else
    assert events()[before:] == [("update", str(user.pk), list(capture.DEFAULT_USER_FIELDS))]
    user.save()  # now the snapshot is what this save wrote to the primary
    assert OutboxEvent.objects.count() == before + 1


def test_a_refresh_that_only_clears_prefetched_relations_changes_nothing() -> None:
    user = User.objects.create_user("ada", first_name="Ada")
    user = User.objects.prefetch_related("logentry_set").get(pk=user.pk)
    user.refresh_from_db(fields=["logentry_set"])
    user.first_name = "Adah"
    before = OutboxEvent.objects.count()
    user.save()
    assert events()[before:] == [("update", str(user.pk), ["first_name"])]


def test_a_refresh_through_a_narrow_queryset_joins_only_what_it_read() -> None:
    user = User.objects.create_user("bea", "bea@example.com", first_name="Bea")
    user.email = "beatrice@example.com"  # unsaved; the refresh below does not read it
    user.refresh_from_db(from_queryset=User.objects.only("first_name"))
    before = OutboxEvent.objects.count()
    user.save()
    assert events()[before:] == [("update", str(user.pk), ["email"])]


def test_values_refreshed_from_a_read_replica_are_not_trusted() -> None:
    from reactive import model_hooks

    user = User.objects.create_user("cy", first_name="Cy")
    tracking = capture.tracking_for(User)
    assert tracking is not None
    lagging = User.objects.only("first_name").get(pk=user.pk)  # as a replica would return it
    lagging._state.db = "replica"  # not where saves go
    model_hooks._join(user, tracking, lagging)
    snapshot = user.__dict__[capture.SNAPSHOT_ATTR]
    assert "first_name" not in snapshot and snapshot["email"] == "" and snapshot[capture.SYNCED] is True
    lagging._state.db = "default"
    model_hooks._join(user, tracking, lagging)
    assert user.__dict__[capture.SNAPSHOT_ATTR]["first_name"] == "Cy"


def test_a_partial_save_sends_nothing_for_what_changed_elsewhere() -> None:
    capture.track(User, fields=("username", "first_name"), predicate=lambda user: user.last_name != "hidden")
    user = User.objects.create_user("dee", first_name="Dee")
    change_elsewhere(user.pk, first_name="Deirdre")  # its own event carried this
    user.last_name = "hidden"  # unsaved: the predicate now says no, in memory only
    user.last_login = timezone.now()
    before = OutboxEvent.objects.count()
    user.save(update_fields=["last_login"])
    assert OutboxEvent.objects.count() == before


def test_a_refresh_finds_its_row_whatever_form_the_key_is_in() -> None:
    user = User.objects.create_user("cal", first_name="Cal")
    change_elsewhere(user.pk, first_name="Calvin")
    user.pk = str(user.pk)  # as a view might set it from a URL
    user.refresh_from_db()
    user.first_name = "Cal"
    before = OutboxEvent.objects.count()
    user.save()
    assert [action for action, _, _ in events()[before:]] == ["update"]


@contextlib.contextmanager
def table_of(model: type[models.Model]) -> Iterator[type[models.Model]]:
    """A model declared in a test, with its table, for as long as the block lasts; then gone again."""
    with connection.schema_editor() as editor:
        editor.create_model(model)
    try:
        yield model
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(model)
        del apps.all_models[model._meta.app_label][model._meta.model_name]
        apps.clear_cache()


@pytest.fixture
def employee() -> Iterator[type[models.Model]]:
    """A multi-table child of the user model, with its table, present (and tracked) for one test."""

    class Employee(User):  # type: ignore[misc,valid-type]
        badge = models.CharField(max_length=20, default="")

        class Meta:
            app_label = "accounts"

    with table_of(Employee):
        capture.untrack(User)
        capture.track(User, predicate=capture.non_staff)  # children are found when a model is tracked
        yield Employee
        capture.untrack(User)
    capture.track(User, predicate=capture.non_staff)


@pytest.mark.django_db(transaction=True)
def test_changes_made_through_a_multi_table_child_are_captured(employee: Any) -> None:
    staff = employee.objects.create(username="eve", first_name="Eve", badge="7")
    staff.first_name = "Evelyn"
    staff.save()
    employee.objects.filter(pk=staff.pk).update(last_name="Adams")
    employee.objects.filter(pk=staff.pk).update(badge="9")  # its own column: nothing to sync
    employee.objects.bulk_update([employee.objects.get(pk=staff.pk)], ["badge"])
    employee.objects.get(pk=staff.pk).delete()
    rows = list(OutboxEvent.objects.order_by("id").values_list("model", "action", "key"))
    key = str(staff.pk)
    assert rows[:3] == [
        ("auth.user", "insert", key),
        ("auth.user", "update", key),
        ("auth.user", "update", key),
    ]
    assert rows[3:] == [("auth.user", "delete", key)]


def test_the_user_model_is_auth_user_on_the_wire_whatever_its_label(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.contrib.auth.models import Group

    monkeypatch.setattr(capture, "get_user_model", lambda: Group)  # as if AUTH_USER_MODEL named Group
    try:
        assert capture.track(Group, fields=["name"]).label == "auth.user"
        Group.objects.create(name="staff")
        assert OutboxEvent.objects.get().model == "auth.user"
    finally:
        capture.untrack(Group)
    assert capture.event_label(User) == "auth.user"


def test_a_reused_object_bulk_created_again_is_diffed_against_what_it_created() -> None:
    user = User.objects.create_user("hal", first_name="Hal")
    user = User.objects.get(pk=user.pk)
    user.delete()  # Django clears its key; its load snapshot stays behind
    user.first_name = "New"
    User.objects.bulk_create([user])
    user.first_name = "Hal"
    before = OutboxEvent.objects.count()
    user.save()
    assert events()[before:] == [("update", str(user.pk), ["first_name"])]


def test_a_full_refresh_from_where_saves_go_makes_the_snapshot_trusted_again() -> None:
    user = User.objects.create_user("ida", first_name="Ida")
    user = User.objects.get(pk=user.pk)
    user.__dict__[capture.SNAPSHOT_DB_ATTR] = "replica"
    user.refresh_from_db()
    before = OutboxEvent.objects.count()
    user.save()
    assert OutboxEvent.objects.count() == before


def test_loading_with_the_predicates_column_deferred_does_not_load_it_per_row() -> None:
    capture.track(User, fields=("username", "first_name"), predicate=capture.non_staff)
    for name in ("jo", "kai", "lee"):
        User.objects.create_user(name)
    with CaptureQueriesContext(connection) as queries:
        loaded = list(User.objects.only("username", "first_name"))
    assert len(loaded) == 3 and len(queries.captured_queries) == 1


def test_without_the_setting_staff_users_are_not_synced(settings: Any) -> None:
    from reactive import resync

    del settings.REACTIVE_SYNC_PREDICATE
    capture.untrack(User)  # what sync and login links fall back to when this process does not capture
    try:
        assert resync.tracking().predicate is capture.non_staff
    finally:
        capture.track(User, predicate=capture.non_staff)


@pytest.fixture
def member() -> Iterator[type[models.Model]]:
    """A proxy of the user model, as Django teams define for roles, present (and tracked) for one test.

    It is made here rather than at import so that the test database, built from models, never sees it.
    """

    class Member(User):  # type: ignore[misc,valid-type]
        class Meta:
            proxy = True
            app_label = "accounts"

    capture.untrack(User)
    capture.track(User, predicate=capture.non_staff)  # proxies are found when a model is tracked
    yield Member
    capture.untrack(User)
    del apps.all_models["accounts"]["member"]
    apps.clear_cache()
    capture.track(User, predicate=capture.non_staff)


def test_changes_made_through_a_proxy_model_are_captured(member: Any) -> None:
    pat = member.objects.create_user("pat", first_name="Pat")
    pat.first_name = "Patricia"
    pat.save()
    member.objects.filter(pk=pat.pk).update(last_name="Quinn")
    other = member.objects.bulk_create([member(username="quin")])[0]
    member.objects.get(pk=pat.pk).delete()
    rows = list(OutboxEvent.objects.order_by("id").values_list("model", "action", "key"))
    key, other_key = str(pat.pk), str(other.pk)
    assert rows == [
        ("auth.user", "insert", key),
        ("auth.user", "update", key),
        ("auth.user", "update", key),
        ("auth.user", "insert", other_key),
        ("auth.user", "delete", key),
    ]


def test_tracking_a_proxy_tracks_its_concrete_model(member: Any) -> None:
    assert capture.track(member, predicate=capture.non_staff).model is User
    assert capture.tracking_for(member) is capture.tracking_for(User)


class Retry(Exception):
    """What a deadlock or a serialization failure makes a retry loop do: roll back and try again."""


def raise_retry() -> None:
    raise Retry


def published_first_names(since: int) -> list[tuple[str, str]]:
    rows = OutboxEvent.objects.order_by("id")[since:].values_list("action", "data")
    return [(action, data.get("first_name")) for action, data in rows]


def test_a_save_retried_after_its_transaction_rolled_back_is_published() -> None:
    user = User.objects.create_user("ria", first_name="Ria")
    user.first_name = "Rianne"
    with pytest.raises(Retry), transaction.atomic():
        user.save()
        raise Retry
    before = OutboxEvent.objects.count()
    user.save()  # the retry: the row still holds "Ria"
    assert User.objects.get(pk=user.pk).first_name == "Rianne"
    assert published_first_names(before) == [("update", "Rianne")]


def test_a_save_in_a_rolled_back_savepoint_is_published_again() -> None:
    user = User.objects.create_user("sal", first_name="Sal", last_name="One")
    with transaction.atomic():
        user.last_name = "Two"
        user.save()  # stands: the outer transaction commits
        user.first_name = "Sally"
        with pytest.raises(Retry), transaction.atomic():
            user.save()
            raise Retry
        before = OutboxEvent.objects.count()
        user.save()
    assert published_first_names(before) == [("update", "Sally")]
    user.save()  # nothing changed since
    assert OutboxEvent.objects.count() == before + 1


def test_an_instance_read_in_a_rolled_back_transaction_is_published_whole() -> None:
    created = User.objects.create_user("tam", first_name="Tam")
    with pytest.raises(Retry), transaction.atomic():
        User.objects.filter(pk=created.pk).update(
            first_name="Tamsin"
        )  # uncommitted, as the read below sees it
        user = User.objects.get(pk=created.pk)
        raise Retry
    before = OutboxEvent.objects.count()
    user.save()  # writes "Tamsin", which the clients have never had
    assert [(a, k) for a, k, _ in events()[before:]] == [("update", str(user.pk))]
    assert OutboxEvent.objects.order_by("id").last().data["first_name"] == "Tamsin"  # type: ignore[union-attr]


@pytest.mark.django_db(transaction=True)
def test_a_snapshot_taken_in_a_committed_transaction_stands() -> None:
    user = User.objects.create_user("una", first_name="Una")
    with transaction.atomic():
        user.first_name = "Unity"
        user.save()
    before = OutboxEvent.objects.count()
    user.save()  # nothing changed since the committed save
    assert OutboxEvent.objects.count() == before
    with transaction.atomic():
        loaded = User.objects.get(pk=user.pk)
    loaded.save()  # read in a transaction that committed: its snapshot stands
    assert OutboxEvent.objects.count() == before


def test_a_captured_instance_still_pickles_and_deep_copies() -> None:
    """setUpTestData deep-copies instances; caches and task queues pickle them."""
    import copy
    import pickle

    user = User.objects.create_user("vic", first_name="Vic")
    with transaction.atomic():
        loaded = User.objects.get(pk=user.pk)
    for instance in (user, loaded):
        assert pickle.loads(pickle.dumps(instance)).first_name == "Vic"
        copied = copy.deepcopy(instance)
        before = OutboxEvent.objects.count()
        copied.save()  # read in the same transaction as the original: nothing changed
        assert OutboxEvent.objects.count() == before


@pytest.mark.django_db(transaction=True)
def test_a_retry_after_a_rolled_back_transaction_is_published_whole() -> None:
    user = User.objects.create_user("wes", first_name="Wes")
    user.first_name = "Wesley"
    with pytest.raises(Retry), transaction.atomic():
        user.save()
        raise Retry
    before = OutboxEvent.objects.count()
    user.save()
    assert published_first_names(before) == [("update", "Wesley")]
    assert set(events()[-1][2]) == set(capture.DEFAULT_USER_FIELDS)  # nothing says what the clients hold


@pytest.mark.django_db(transaction=True)
def test_a_commit_whose_earlier_hook_failed_is_not_taken_for_a_rollback() -> None:
    """Django stops running on_commit callbacks at the first that raises: capture's own never runs."""

    user = User.objects.create_user("xia", first_name="Xia")
    with pytest.raises(Retry), transaction.atomic():
        transaction.on_commit(raise_retry)
        user.first_name = "Xiadani"
        user.save()  # committed, and its event with it
    assert User.objects.get(pk=user.pk).first_name == "Xiadani"
    user.first_name = "Xia"
    before = OutboxEvent.objects.count()
    user.save()  # back to the old name: the clients hold "Xiadani", so this must go out
    assert published_first_names(before) == [("update", "Xia")]


@pytest.mark.django_db(transaction=True)
def test_a_commit_after_a_rolled_back_savepoint_whose_earlier_hook_failed_stands() -> None:
    user = User.objects.create_user("yan", first_name="Yan")
    with pytest.raises(Retry), transaction.atomic():
        transaction.on_commit(raise_retry)
        user.first_name = "Yannick"
        user.save()
        with contextlib.suppress(ValueError), transaction.atomic():  # get_or_create's savepoint, say
            raise ValueError
    assert User.objects.get(pk=user.pk).first_name == "Yannick"
    user.first_name = "Yan"
    before = OutboxEvent.objects.count()
    user.save()
    assert published_first_names(before) == [("update", "Yan")]


@pytest.mark.django_db(transaction=True)
def test_a_refresh_in_a_rolled_back_transaction_does_not_bring_back_an_older_snapshot() -> None:
    user = User.objects.create_user("zed", first_name="Zed")
    User.objects.filter(pk=user.pk).update(first_name="Zedd")  # another writer, published and committed
    with pytest.raises(Retry), transaction.atomic():
        user.refresh_from_db(from_queryset=User.objects.select_for_update())
        raise Retry  # a retry loop's failed attempt
    user.first_name = "Zed"
    before = OutboxEvent.objects.count()
    user.save()  # Zedd -> Zed must go out
    assert published_first_names(before) == [("update", "Zed")]


@pytest.mark.django_db(transaction=True)
def test_a_manual_commit_then_rollback_keeps_what_was_committed() -> None:
    user = User.objects.create_user("abe", first_name="Abe")
    transaction.set_autocommit(False)
    try:
        user.first_name = "Abel"
        user.save()
        transaction.commit()
        transaction.rollback()  # nothing left to undo
    finally:
        transaction.set_autocommit(True)
    user.first_name = "Abe"
    before = OutboxEvent.objects.count()
    user.save()
    assert published_first_names(before) == [("update", "Abe")]


def test_a_long_transaction_keeps_one_commit_marker_per_savepoint_level() -> None:
    users = [User.objects.create_user(f"many{i}") for i in range(50)]
    with transaction.atomic():
        hooks_before = len(connection.run_on_commit)
        for user in users:
            loaded = User.objects.get(pk=user.pk)
            loaded.first_name = "Many"
            loaded.save()
        added = len(connection.run_on_commit) - hooks_before
    assert added <= 2  # one marker and one relay request, not one per load or save


# -- what the review found: values the diff could not see, and deletes it misjudged -------------------------
def test_a_tracked_field_set_to_an_expression_is_published_as_stored() -> None:
    """`user.email = Lower("email")` is plain Django: the instance holds the expression, only the row the
    value. The save crashed (an expression is no JSON) and rolled back; now the row is read back."""
    from django.db.models.functions import Lower, Upper

    user = User.objects.create_user("Alice", "Alice@Example.com", first_name="Alice")
    user.email = Lower("email")
    user.save()
    user.first_name = Upper("first_name")
    user.save(update_fields=["first_name"])
    updates = list(OutboxEvent.objects.filter(action="update").order_by("id"))
    assert [(e.data["email"], e.data["first_name"], e.changed) for e in updates] == [
        ("alice@example.com", "Alice", ["email"]),
        ("alice@example.com", "ALICE", ["first_name"]),
    ]


def test_loaddata_is_left_to_reactive_sync(tmp_path: Any) -> None:
    """Raw saves are not captured, as Django advises for signal receivers: a data migration's fixture may
    load before the outbox table exists, and a test database restored from its serialization would send
    every user again. README (Operations) sends what they changed with `reactive sync`."""
    import json

    from django.core.management import call_command

    bob = User.objects.create_user("bob", first_name="Bob")
    fields = {
        "username": "bob",
        "first_name": "Robert",
        "password": "",
        "date_joined": "2024-01-01T00:00:00Z",
    }
    fixture = tmp_path / "users.json"
    fixture.write_text(json.dumps([{"model": "auth.user", "pk": bob.pk, "fields": fields}]))
    before = OutboxEvent.objects.count()
    call_command("loaddata", str(fixture), verbosity=0)
    assert User.objects.get(pk=bob.pk).first_name == "Robert"
    assert OutboxEvent.objects.count() == before


def test_a_delete_vetoed_after_its_verdict_leaves_no_verdict_for_the_next() -> None:
    """pre_delete read the row's verdict ("never synced"), then another receiver vetoed the delete. The user
    was then made to qualify (an insert to the clients) and deleted: that delete must reach them."""
    from django.db.models.signals import pre_delete

    bob = User.objects.create_user("bob", is_staff=True)
    loaded = User.objects.get(pk=bob.pk)

    def veto(sender: Any, instance: Any, **kwargs: Any) -> None:
        raise PermissionError("not today")

    pre_delete.connect(veto, sender=User, dispatch_uid="test-veto")
    try:
        with pytest.raises(PermissionError), transaction.atomic():
            loaded.delete()
    finally:
        pre_delete.disconnect(sender=User, dispatch_uid="test-veto")
    loaded.is_staff = False
    loaded.save()
    loaded.delete()
    assert [action for action, key, _ in events() if key == str(bob.pk)] == ["insert", "delete"]


@pytest.mark.parametrize("how", ["instance", "queryset"])
def test_a_delete_through_an_instance_loaded_while_staff_reaches_the_clients(how: str) -> None:
    """Loaded while staff, the instance says "never on the clients"; meanwhile another writer made the
    user non-staff (the clients got an insert). Its delete must reach them, or they keep the user for
    good. The row is asked, locked, when the instance's verdict is "not synced"."""
    bob = User.objects.create_user("bob", first_name="Bob", is_staff=True)
    stale = User.objects.get(pk=bob.pk)
    change_elsewhere(bob.pk, is_staff=False)  # an insert to the clients
    if how == "instance":
        stale.delete()
    else:
        User.objects.filter(username="bob").delete()
    assert [action for action, key, _ in events() if key == str(bob.pk)] == ["insert", "delete"]


def test_deleting_a_staff_user_still_publishes_nothing_and_asks_once() -> None:
    admin = User.objects.create_user("root", is_staff=True)
    with CaptureQueriesContext(connection) as queries:
        admin.delete()
    assert events() == []
    reads = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]
    assert len([sql for sql in reads if "auth_user" in sql and "outbox" not in sql]) == 1


@pytest.fixture
def gadget() -> Iterator[type[models.Model]]:
    """A tracked model of its own with a JSON column, a time, a duration and bytes, for one test."""

    class Gadget(models.Model):
        name = models.CharField(max_length=20)
        prefs = models.JSONField(default=dict)
        opens = models.TimeField(null=True)
        lasts = models.DurationField(null=True)
        blob = models.BinaryField(null=True)

        class Meta:
            app_label = "accounts"

    with table_of(Gadget):
        capture.track(Gadget, fields=["name", "prefs", "opens", "lasts", "blob"])
        yield Gadget
        capture.untrack(Gadget)


@pytest.mark.django_db(transaction=True)
def test_a_mutable_value_changed_in_place_and_columns_json_has_no_type_for(gadget: Any) -> None:
    """A JSONField's dict changed in place changed the snapshot's too (the same object): the diff saw
    nothing. A time, a duration or bytes made every save raise (no JSON for them) and roll back."""
    import datetime

    made = gadget.objects.create(
        name="g", prefs={"theme": "light"}, opens=datetime.time(9, 30), lasts=datetime.timedelta(hours=8)
    )
    made.blob = b"\x00\xff"
    made.save()
    loaded = gadget.objects.get(pk=made.pk)
    loaded.prefs["theme"] = "dark"
    loaded.save()
    rows = list(OutboxEvent.objects.order_by("id").values_list("action", "changed", "data"))
    assert [(action, changed) for action, changed, _ in rows] == [
        ("insert", ["name", "prefs", "opens", "lasts", "blob"]),
        ("update", ["blob"]),
        ("update", ["prefs"]),
    ]
    data = rows[-1][2]
    assert data["prefs"] == {"theme": "dark"} and data["opens"] == "09:30:00"
    assert data["lasts"] == "P0DT08H00M00S" and data["blob"] == "AP8="


def first_team(model: type[models.Model]) -> Any:
    return model.objects.order_by("pk").values_list("pk", flat=True).first()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("on_delete", ["set_null", "set_default", "set_callable", "set_value"])
def test_a_tracked_foreign_key_a_deletion_resets_is_captured(on_delete: str) -> None:
    """Deleting a team sets its members' team per on_delete. SET_NULL and SET(value) go through update(),
    SET_DEFAULT and SET(callable) through UpdateQuery.update_batch, which sent nothing: the clients kept
    the deleted team."""

    class Team(models.Model):
        name = models.CharField(max_length=20)

        class Meta:
            app_label = "accounts"

    reset = {
        "set_null": models.SET_NULL,
        "set_default": models.SET_DEFAULT,
        "set_callable": models.SET(lambda: first_team(Team)),
        "set_value": models.SET(None),
    }[on_delete]

    class Member(models.Model):
        name = models.CharField(max_length=20)
        team = models.ForeignKey(Team, null=True, default=None, on_delete=reset, related_name="+")

        class Meta:
            app_label = "accounts"

    with table_of(Team), table_of(Member):
        capture.track(Member, fields=["name", "team"])
        try:
            home, away = Team.objects.create(name="home"), Team.objects.create(name="away")
            members = [Member.objects.create(name=n, team=away) for n in ("m1", "m2")]
            Member.objects.create(name="m3", team=home)
            mark = OutboxEvent.objects.order_by("-id").values_list("id", flat=True).first()
            away.delete()
            rows = OutboxEvent.objects.filter(id__gt=mark).order_by("id")
            changes = [(r.action, r.key, r.changed, r.data["team"]) for r in rows]
        finally:
            capture.untrack(Member)
    expected = home.pk if on_delete == "set_callable" else None
    assert changes == [("update", str(m.pk), ["team"], expected) for m in members]
