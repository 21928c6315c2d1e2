"""Capture of the QuerySet methods that send no signals: update(), bulk_update() and bulk_create()."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import NotSupportedError, connection, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Upper
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reactive import bulk, capture
from reactive.outbox import OutboxEvent

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("captured")]
User = get_user_model()


def events_since(mark: int) -> list[tuple[str, str, list[str]]]:
    rows = OutboxEvent.objects.filter(id__gt=mark).order_by("id")
    return list(rows.values_list("action", "key", "changed"))


def last_id() -> int:
    return OutboxEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


@pytest.fixture
def people() -> list[int]:
    made = [User.objects.create_user(name, f"{name}@example.com", first_name=name.title()) for name in "abc"]
    return [user.pk for user in made]


def test_update_emits_one_update_per_row_with_the_stored_values(people: list[int]) -> None:
    mark = last_id()
    count = User.objects.filter(pk__in=people[:2]).update(first_name="Zed")
    assert count == 2
    assert events_since(mark) == [("update", str(pk), ["first_name"]) for pk in people[:2]]
    row = OutboxEvent.objects.filter(id__gt=mark).first()
    assert row is not None and row.data["first_name"] == "Zed" and row.data["username"] == "a"


def test_update_with_an_expression_records_what_the_database_computed(people: list[int]) -> None:
    mark = last_id()
    User.objects.filter(pk=people[0]).update(last_name=F("first_name"))
    row = OutboxEvent.objects.get(id__gt=mark)
    assert (row.action, row.changed, row.data["last_name"]) == ("update", ["last_name"], "A")


def test_rows_that_stop_matching_the_filter_are_still_captured(people: list[int]) -> None:
    mark = last_id()
    User.objects.filter(is_active=True).update(is_active=False)
    assert events_since(mark) == [("update", str(pk), ["is_active"]) for pk in people]


def test_an_update_that_changes_who_is_synced_deletes_and_inserts(people: list[int]) -> None:
    mark = last_id()
    User.objects.filter(pk=people[0]).update(is_staff=True)
    assert events_since(mark) == [("delete", str(people[0]), ["is_staff"])]
    mark = last_id()
    User.objects.filter(pk=people[0]).update(is_staff=False)
    assert [(action, key) for action, key, _ in events_since(mark)] == [("insert", str(people[0]))]


def test_rows_an_update_leaves_as_they_were_emit_nothing(people: list[int]) -> None:
    mark = last_id()
    User.objects.filter(pk__in=people).update(first_name=F("first_name"), email="a@example.com")
    assert [key for _, key, _ in events_since(mark)] == [str(people[1]), str(people[2])]


def test_an_update_of_untracked_columns_is_one_query_and_emits_nothing(people: list[int]) -> None:
    mark = last_id()
    with CaptureQueriesContext(connection) as queries:
        User.objects.filter(pk__in=people).update(last_login=timezone.now(), password="!")
    assert len(queries.captured_queries) == 1
    assert events_since(mark) == []


def test_a_custom_predicate_is_asked_whatever_the_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    capture.track(User, fields=("username", "first_name"), predicate=lambda user: user.last_name != "hidden")
    user = User.objects.create_user("dora", first_name="Dora")
    mark = last_id()
    User.objects.filter(pk=user.pk).update(last_name="hidden")
    assert events_since(mark) == [("delete", str(user.pk), [])]


def test_a_rolled_back_update_emits_nothing(people: list[int]) -> None:
    mark = last_id()
    with pytest.raises(RuntimeError), transaction.atomic():
        User.objects.filter(pk__in=people).update(first_name="Gone")
        raise RuntimeError("boom")
    assert events_since(mark) == []
    assert not User.objects.filter(first_name="Gone").exists()


def test_a_sliced_update_is_refused_as_django_refuses_it(people: list[int]) -> None:
    with pytest.raises(TypeError, match="slice"):
        User.objects.all()[:1].update(first_name="X")


def test_untracked_models_and_other_databases_pass_straight_through(people: list[int]) -> None:
    Group.objects.create(name="g")
    mark = last_id()
    assert Group.objects.update(name="h") == 1
    capture.track(User, predicate=capture.non_staff, databases=["elsewhere"])
    assert User.objects.filter(pk__in=people).update(first_name="Q") == 3
    assert events_since(mark) == []


def test_bulk_update_is_captured_through_update(people: list[int]) -> None:
    users = list(User.objects.filter(pk__in=people).order_by("pk"))
    for user, name in zip(users, ("X", "Y", "Z"), strict=True):
        user.first_name = name
    mark = last_id()
    assert User.objects.bulk_update(users, ["first_name"], batch_size=2) == 3
    rows = list(OutboxEvent.objects.filter(id__gt=mark).order_by("id"))
    assert [(row.key, row.data["first_name"]) for row in rows] == [
        (str(pk), name) for pk, name in zip(people, "XYZ", strict=True)
    ]


def test_bulk_create_emits_an_insert_for_each_synced_row() -> None:
    mark = last_id()
    made = User.objects.bulk_create([User(username="erin"), User(username="root", is_staff=True)])
    assert events_since(mark) == [("insert", str(made[0].pk), list(capture.DEFAULT_USER_FIELDS))]
    made[0].first_name = "Erin"
    made[0].save()  # the created row carries its snapshot, so the next save diffs without a SELECT
    assert events_since(mark)[-1] == ("update", str(made[0].pk), ["first_name"])


def test_bulk_create_with_update_conflicts_updates_the_rows_it_met(people: list[int]) -> None:
    mark = last_id()
    User.objects.bulk_create(
        [User(username="a", first_name="Ada"), User(username="fred", first_name="Fred")],
        update_conflicts=True,
        unique_fields=["username"],
        update_fields=["first_name"],
    )
    fred = User.objects.get(username="fred")
    assert events_since(mark) == [
        ("update", str(people[0]), ["first_name"]),
        ("insert", str(fred.pk), list(capture.DEFAULT_USER_FIELDS)),
    ]


def test_bulk_create_ignoring_conflicts_is_refused_before_any_write() -> None:
    mark = last_id()
    with pytest.raises(NotSupportedError, match=r"ignore_conflicts=True\) on auth.user cannot be synced"):
        User.objects.bulk_create([User(username="gail")], ignore_conflicts=True)
    with pytest.raises(NotSupportedError, match="ignore_conflicts"):
        User.objects.bulk_create([User(username="gail")], 10, True)  # Django's positional form
    assert not User.objects.filter(username="gail").exists()
    assert events_since(mark) == []


def test_an_update_through_an_annotation_or_a_distinct_join_works_as_in_django(people: list[int]) -> None:
    group = Group.objects.create(name="g")
    group.user_set.add(*people[:2])
    mark = last_id()
    annotated = User.objects.annotate(shout=Upper("email")).filter(pk=people[0])
    assert annotated.update(first_name=F("shout")) == 1
    assert User.objects.filter(groups__name="g").distinct().update(last_name="G") == 2
    assert events_since(mark) == [
        ("update", str(people[0]), ["first_name"]),
        ("update", str(people[0]), ["last_name"]),
        ("update", str(people[1]), ["last_name"]),
    ]


def test_a_captured_update_writes_its_events_in_one_insert(people: list[int]) -> None:
    with CaptureQueriesContext(connection) as queries:
        User.objects.filter(pk__in=people).update(first_name="One")
    inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 1 and OutboxEvent.objects.filter(changed=["first_name"]).count() == 3


def test_an_update_of_the_primary_key_is_refused(people: list[int]) -> None:
    with pytest.raises(NotSupportedError, match="primary key of auth.user"):
        User.objects.filter(pk=people[0]).update(id=10_000)
    with pytest.raises(NotSupportedError, match="primary key"):
        User.objects.filter(pk=people[0]).update(pk=10_000)
    assert User.objects.filter(pk=people[0]).exists()


def test_after_bulk_update_a_save_is_diffed_against_what_was_stored(people: list[int]) -> None:
    user = User.objects.get(pk=people[0])
    user.first_name = "X"
    User.objects.bulk_update([user], ["first_name"])
    user.first_name = "A"  # back to what it was loaded with, but not to what is stored
    mark = last_id()
    user.save()
    assert events_since(mark) == [("update", str(user.pk), ["first_name"])]


def test_after_an_upsert_a_save_is_diffed_against_what_was_stored(people: list[int]) -> None:
    (met,) = User.objects.bulk_create(
        [User(username="a", first_name="y")],
        update_conflicts=True,
        unique_fields=["username"],
        update_fields=["first_name"],
    )
    assert User.objects.get(pk=people[0]).email == "a@example.com"
    mark = last_id()
    met.save()  # writes the blank email and the join time it was built with
    assert events_since(mark) == [("update", str(people[0]), ["email", "date_joined"])]


def test_an_upsert_on_the_primary_key(people: list[int]) -> None:
    mark = last_id()
    stored = User.objects.get(pk=people[1])
    stored.first_name = "Bea"
    User.objects.bulk_create(
        [stored], update_conflicts=True, unique_fields=["pk"], update_fields=["first_name"]
    )
    assert events_since(mark) == [("update", str(people[1]), ["first_name"])]


def test_a_queryset_delete_emits_a_delete_per_synced_row(people: list[int]) -> None:
    User.objects.filter(pk=people[2]).update(is_staff=True)
    mark = last_id()
    User.objects.filter(pk__in=people).delete()
    assert sorted(events_since(mark)) == sorted(("delete", str(pk), []) for pk in people[:2])


@pytest.fixture
def untracked_afterwards() -> Iterator[None]:
    yield
    capture.track(User, predicate=capture.non_staff)  # the captured fixture untracks it again


def test_untracking_the_last_model_restores_querysets(untracked_afterwards: None) -> None:
    wrapped = ("update", "bulk_update", "bulk_create")
    assert all(hasattr(getattr(QuerySet, name), "__wrapped__") for name in wrapped) and bulk._originals
    capture.untrack(User)
    assert not any(hasattr(getattr(QuerySet, name), "__wrapped__") for name in wrapped)
