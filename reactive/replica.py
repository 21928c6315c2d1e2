"""Applying events to a client's models: upsert or delete by master key, version check, tombstones.

Identity is the master key, kept in ReplicaState beside the local row, never the username: a rename on
the master renames the local user. A delete keeps its state row (a tombstone) with its version, so a
late insert or update with a lower version cannot bring the row back.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    connections,
    models,
    transaction,
)
from django.db.models import Q
from django.utils import timezone

from reactive.capture import DEFAULT_USER_FIELDS
from reactive.errors import ApplyError, ReactiveError
from reactive.events import USER_MODEL, Event, parse_time

log = logging.getLogger("reactive.replica")
Status = Literal["applied", "stale", "failed"]
BOOLEAN_FIELDS = {"is_active", "is_staff", "is_superuser"}
_MISSING = object()  # a field this user model does not have
# Renames not applied because a local account holds the name (logged each time, with this count): an
# operator frees the name, then `reactive verify` shows the replica's old name until the rename lands.
held_renames = 0


class ReplicaState(models.Model):
    model = models.CharField(max_length=100)
    key = models.CharField(max_length=255)
    version = models.BigIntegerField()
    deleted = models.BooleanField(default=False)
    local_pk = models.CharField(max_length=64, null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The master's name for this user, not applied: a local account of this client holds it. Given to the
    # row once that account lets it go (apply_held_renames), or by the user's next event.
    # db_default: a listener of the previous release, still running while a deploy rolls, inserts rows
    # without the column.
    held_username = models.CharField(max_length=150, blank=True, default="", db_default="")

    class Meta:
        app_label = "reactive"
        constraints = [models.UniqueConstraint(fields=["model", "key"], name="reactive_replica_model_key")]
        indexes = [
            models.Index(fields=["model", "local_pk"], name="reactive_replica_local"),
            # Few rows ever hold a name: the periodic look for them reads only those.
            models.Index(
                fields=["held_username"], name="reactive_replica_held", condition=~Q(held_username="")
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} {self.key} v{self.version}{' (deleted)' if self.deleted else ''}"


@dataclass(frozen=True)
class Outcome:
    event: Event
    status: Status
    error: str = ""
    profile: Mapping[str, Any] | None = None  # what the browser sees, for the notification
    local_pk: str | None = None  # the local row, whose personal group is notified


LEGACY_PREFIX = "username:"
PLACEHOLDER_PREFIX = "~displaced-"


def state_key(event: Event) -> str:
    # Legacy events are keyed by username; keep them apart from master primary keys.
    return event.key if event.key_field == "pk" else f"{LEGACY_PREFIX}{event.key}"


def resolve_model(label: str) -> type[models.Model]:
    """The local model an event's ``model`` names: the user model only. Applying is written for users
    (usernames, tombstones, adoption); an event for any other model, however well formed, would write
    rows nobody asked a client to keep."""
    if label == USER_MODEL:
        return get_user_model()
    raise ApplyError(f"model {label!r} is not replicated on this client (only {USER_MODEL} is)")


def replicated_fields() -> tuple[str, ...]:
    from django.conf import settings

    return tuple(getattr(settings, "REACTIVE_REPLICA_FIELDS", DEFAULT_USER_FIELDS))


def apply(event: Event, using: str = "default") -> Outcome:
    """Apply one event in a savepoint of the caller's transaction; never raises for a bad event."""
    return apply_batch([event], using)[0]


def apply_batch(events: Sequence[Event], using: str = "default") -> list[Outcome]:
    """Apply events in order, each in its own savepoint of the caller's transaction.

    The state rows of the batch's keys and their local rows are read once, up front (locked, in key
    order, where the database locks rows); each event then costs its own writes only. A bad event rolls
    back its savepoint and nothing else. Never raises for a bad event; a database in trouble raises.
    """
    # The reads lock rows, which needs a transaction: the caller's (the listener's), or one of our own.
    bare = not connections[using].in_atomic_block
    with transaction.atomic(using=using) if bare else contextlib.nullcontext():
        known = _Known(events, using)
        return [_apply_one(event, known) for event in events]


def _apply_one(event: Event, known: _Known) -> Outcome:
    try:
        with transaction.atomic(using=known.using):
            return _apply(event, known)
    except (IntegrityError, DataError) as exc:  # the database refused this event's values
        return _failed(event, known, exc)
    except (DatabaseError, InterfaceError):
        raise  # the whole database is in trouble, not this event: the batch fails and is retried
    except Exception as exc:  # this event's values, whatever Django or the model raised for them
        return _failed(event, known, exc)


def _failed(event: Event, known: _Known, exc: Exception) -> Outcome:
    known.forget(event)  # its savepoint is gone: what this event did to the cache is not true
    reason = str(exc) if isinstance(exc, ReactiveError) else f"{type(exc).__name__}: {exc}"
    return Outcome(event, "failed", reason)


class _Known:
    """What one batch has read: state rows by (model, key) and local rows by (model, pk)."""

    def __init__(self, events: Sequence[Event], using: str) -> None:
        self.using = using
        self.states: dict[tuple[str, str], ReplicaState] = {}
        self.held: dict[tuple[str, str], str] = {}  # (model, state key) -> the name a local account holds
        self.rows: dict[tuple[str, str], models.Model] = {}
        keys: dict[str, set[str]] = {}
        for event in events:
            keys.setdefault(event.model, set()).add(state_key(event))
        for label, model_keys in keys.items():
            self._read(label, sorted(model_keys))

    def _read(self, label: str, keys: list[str]) -> None:
        found = (
            ReplicaState.objects.using(self.using)
            .select_for_update()
            .filter(model=label, key__in=keys)
            .order_by("key")  # one lock order for every listener: no deadlock between two of them
        )
        self.states.update({(label, state.key): state for state in found})
        pks = [s.local_pk for s in self.states.values() if s.model == label and s.local_pk and not s.deleted]
        try:
            model = resolve_model(label)
        except ApplyError:
            return  # each of its events fails on its own
        for pk, row in model._default_manager.using(self.using).in_bulk(pks).items():
            self.rows[(label, str(pk))] = row

    def state(self, event: Event) -> ReplicaState | None:
        return self.states.get((event.model, state_key(event)))

    def row(self, model: type[models.Model], label: str, pk: str) -> models.Model | None:
        if (label, pk) not in self.rows:
            row = model._default_manager.using(self.using).filter(pk=pk).first()
            if row is None:
                return None
            self.rows[(label, pk)] = row
        return self.rows[(label, pk)]

    def remember(self, event: Event, state: ReplicaState, row: models.Model | None) -> None:
        self.states[(event.model, state.key)] = state
        if row is not None:
            self.rows[(event.model, str(row.pk))] = row

    def forget(self, event: Event) -> None:
        """Read this event's key again: a failed event may have changed cached objects it then rolled back."""
        key = (event.model, state_key(event))
        state = self.states.pop(key, None)
        if state is not None and state.local_pk:
            self.rows.pop((event.model, state.local_pk), None)
        again = ReplicaState.objects.using(self.using).filter(model=event.model, key=key[1]).first()
        if again is not None:
            self.states[key] = again


def _apply(event: Event, known: _Known) -> Outcome:
    known.held.pop((event.model, state_key(event)), None)  # a failed earlier event's hold
    model = resolve_model(event.model)
    state = known.state(event)
    if state is not None and event.version <= state.version:
        return Outcome(event, "stale")
    if event.action == "delete":
        removed_pk = _delete_local(model, state, event, known.using)
        if removed_pk is not None:
            known.rows.pop((event.model, removed_pk), None)  # another key's state may still point at it
        profile: dict[str, Any] = {"key": event.key, "version": event.version, "deleted": True}
        local_pk = row = None
    else:
        row = _upsert(model, state, event, known)
        profile = profile_of(row, event.key, event.version)
        local_pk = removed_pk = str(row.pk)
    held = known.held.pop((event.model, state_key(event)), "")
    state = _write_state(state, event, local_pk, known.using, held)
    known.remember(event, state, row)
    return Outcome(event, "applied", profile=profile, local_pk=removed_pk)


def _write_state(
    state: ReplicaState | None, event: Event, local_pk: str | None, using: str, held: str = ""
) -> ReplicaState:
    deleted = event.action == "delete"
    if state is None:
        return ReplicaState.objects.using(using).create(
            model=event.model,
            key=state_key(event),
            version=event.version,
            deleted=deleted,
            local_pk=local_pk,
            held_username=held,
        )
    changes = {
        "version": event.version,
        "deleted": deleted,
        "local_pk": local_pk,
        "held_username": held,  # an event that brought its name (or another name) ends the hold
        "updated_at": timezone.now(),
    }
    ReplicaState.objects.using(using).filter(pk=state.pk).update(**changes)
    for name, value in changes.items():
        setattr(state, name, value)
    return state


def _delete_local(
    model: type[models.Model], state: ReplicaState | None, event: Event, using: str
) -> str | None:
    manager = model._default_manager.using(using)
    rows = manager.none()
    if state is not None and state.local_pk:
        rows = manager.filter(pk=state.local_pk)
    elif event.key_field == "username":  # a legacy delete of a row no key links, and never a staff one
        candidate = manager.filter(username=event.key).first()
        live = ReplicaState.objects.using(using).filter(model=event.model, deleted=False)
        if candidate is not None and not privileged(candidate) and not _linked(live, candidate):
            rows = manager.filter(pk=candidate.pk)
    local_pk = rows.values_list("pk", flat=True).first()
    rows.delete()
    return None if local_pk is None else str(local_pk)


def _upsert(
    model: type[models.Model], state: ReplicaState | None, event: Event, known: _Known
) -> models.Model:
    using = known.using
    manager = model._default_manager.using(using)
    values = _clean(event.data, model)
    instance = None
    if state is not None and state.local_pk and not state.deleted:
        instance = known.row(model, event.model, state.local_pk)
    # A legacy event's first row, found by its username, goes through the holder's rules below.
    username = values.get("username") or (event.key if event.key_field == "username" else None)
    # Usernames are unique: a row that already has this username cannot collide with another one.
    adopted = False
    if username and getattr(instance, "username", None) != username:
        holder = (
            manager.select_for_update().filter(username=username).exclude(pk=getattr(instance, "pk", None))
        )
        found = holder.first()
        if found is not None:
            instance, adopted = _resolve_holder(found, instance, event, values, known)
            username = values.get("username") or username
    if instance is None:
        if not username:
            raise ApplyError(f"{event.action} of unknown key {event.key} carries no username")
        instance = model(username=username)
        adopted = True
    if adopted and hasattr(instance, "set_unusable_password"):
        instance.set_unusable_password()  # a replica signs in by the master's link only
    elif all(getattr(instance, name, _MISSING) == value for name, value in values.items()):
        return instance  # a replay of what the row already holds: no write
    for name, value in values.items():
        setattr(instance, name, value)
    instance.save(using=using)
    return instance


def _resolve_holder(
    holder: models.Model, instance: models.Model | None, event: Event, values: dict[str, Any], known: _Known
) -> tuple[models.Model | None, bool]:
    """Another local row has the event's username: (the row to write, whether it is adopted).

    Versions are the master's outbox ids, ordered across users, and the master's usernames are unique.
    So when the holder replicates another master user at an older version than this event, that user's
    rename (or delete) is still on its way: the holder steps aside to a placeholder name until it comes.
    When the holder's version is newer, this event's name is the out-of-date one: the row keeps (or, new,
    gets) a placeholder until this user's own later event arrives. A local user that nothing links is
    adopted by an event whose key has no row here yet, unless it is staff or superuser. A legacy
    replica (keyed by username, versions of another clock) is taken over by the first keyed event that
    brings its username for a key with no row yet, which is how a client moves off the prototype's
    messages; otherwise legacy rows wait for their own rename. A rename onto a local account's name (one
    no key links, which never moves by itself) applies all but the name, with a warning: the replica keeps
    its name until that account is renamed or deleted and a later event of this user brings the name again.
    """
    linked = (  # locked: another listener of this client may be applying the holder's own event
        ReplicaState.objects.using(known.using)
        .select_for_update()
        .filter(model=event.model, local_pk=str(holder.pk), deleted=False)
        .first()
    )
    name = getattr(holder, "username", "?")
    if linked is None:
        if instance is None and not privileged(holder):
            return holder, True
        if instance is not None:
            # A rename onto a local account's name. Refusing the event refused every later one of this
            # user too, a disable included (it stayed active here): the rest applies, the name waits.
            values.pop("username", None)
            _held_rename(event, instance, name)
            known.held[(event.model, state_key(event))] = name
            return instance, False
        raise ApplyError(
            f"username {name!r} is held by a local staff user; rename or delete it on this client"
        )
    if instance is None and event.key_field == "pk" and linked.key.startswith(LEGACY_PREFIX):
        # The switch from the prototype's messages: its replica of this username is this master user's.
        if privileged(holder):  # an older version adopted a local admin under that name: never take it
            raise ApplyError(
                f"username {name!r} is held by a local staff user; rename or delete it on this client"
            )
        linked.deleted, linked.local_pk = True, None
        linked.save(using=known.using, update_fields=["deleted", "local_pk", "updated_at"])
        known.states.pop((event.model, linked.key), None)
        return holder, False
    comparable = event.key_field == "pk" and not linked.key.startswith(LEGACY_PREFIX)
    if comparable and linked.version < event.version:
        holder.username = placeholder(linked.key)
        holder.save(using=known.using, update_fields=["username"])
        known.rows.pop((event.model, str(holder.pk)), None)  # the cached object still has the old name
        return instance, False
    if comparable:
        if instance is not None:
            values.pop("username", None)
        else:
            values["username"] = placeholder(event.key)
        return instance, False
    raise ApplyError(
        f"username {name!r} is held by key {linked.key}; retrying until its own rename or delete arrives"
    )


def _held_rename(event: Event, instance: models.Model, wanted: str) -> None:
    global held_renames
    held_renames += 1
    log.warning(
        "key %s v%s: the master renamed it to %r, a local account's name on this client; its other fields "
        "applied, its name kept as %r until that account is renamed or deleted here (then it gets the name) "
        "[held renames in this process: %d]",
        event.key,
        event.version,
        wanted,
        getattr(instance, "username", ""),
        held_renames,
    )


def apply_held_renames(using: str = "default") -> list[tuple[str, dict[str, Any]]]:
    """Give held names to their replicas where no one holds them any more (the local account was renamed
    or deleted); returns (local pk, profile) of each renamed user, to notify once committed.

    Each name in a transaction of its own (a savepoint inside the caller's), its user row locked before
    its state, as a batch that renames another user onto this row's name locks them: one that fails (the
    name taken meanwhile) leaves the others given, and the two never wait on each other in a cycle.
    """
    renamed: list[tuple[str, dict[str, Any]]] = []
    held = (
        ReplicaState.objects.using(using)
        .filter(model=USER_MODEL, deleted=False)
        .exclude(held_username="")
        .order_by("key")
        .values_list("pk", flat=True)
    )
    for state_pk in list(held):
        try:
            with transaction.atomic(using=using):
                given = _give_held_name(state_pk, using)
        except IntegrityError as exc:
            log.warning("replica state %s: its held name could not be given yet: %s", state_pk, exc)
            continue
        if given is not None:
            renamed.append(given)
    return renamed


def _give_held_name(state_pk: int, using: str) -> tuple[str, dict[str, Any]] | None:
    states = ReplicaState.objects.using(using)
    state = states.filter(pk=state_pk).first()
    if state is None or not state.local_pk:
        return None
    manager = resolve_model(USER_MODEL)._base_manager.using(using)  # the default may hide the name's holder
    row = manager.select_for_update().filter(pk=state.local_pk).first()
    state = states.select_for_update().filter(pk=state_pk, deleted=False).exclude(held_username="").first()
    if row is None or state is None or str(row.pk) != state.local_pk:
        return None  # the row is gone (its next event decides), or a batch ended the hold meanwhile
    if manager.filter(username=state.held_username).exclude(pk=row.pk).exists():
        return None  # still held
    row.username = state.held_username
    row.save(using=using, update_fields=["username"])
    states.filter(pk=state.pk).update(held_username="")
    log.info("key %s: the held name %r is free now and given to its replica", state.key, row.username)
    key = state.key.removeprefix(LEGACY_PREFIX)  # as the listener's profiles carry it
    return str(row.pk), profile_of(row, key, state.version)


def _linked(live: models.QuerySet[ReplicaState], row: models.Model) -> bool:
    return live.filter(local_pk=str(row.pk)).exists()


def privileged(row: models.Model) -> bool:
    """A client's own staff or superuser account: never taken over, never signed into by a link."""
    return bool(getattr(row, "is_staff", False) or getattr(row, "is_superuser", False))


def placeholder(key: str) -> str:
    """A username no master user can have (Django's usernames have no "~"), held until the real one comes."""
    return f"{PLACEHOLDER_PREFIX}{key}"


def _clean(data: Mapping[str, Any], model: type[models.Model]) -> dict[str, Any]:
    allowed = replicated_fields()
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name not in allowed:
            continue
        if name in BOOLEAN_FIELDS and not isinstance(value, bool):
            raise ApplyError(f"{name} must be true or false, got {value!r}")
        if name == "date_joined" and value is not None:
            value = parse_time(value) if isinstance(value, str) else None
        if name == "username" and (not isinstance(value, str) or not value or len(value) > 150):
            raise ApplyError(f"bad username {value!r}")
        if name == "username" and value.startswith(PLACEHOLDER_PREFIX):
            raise ApplyError(f"username {value!r} is reserved for names waiting for their rename")
        if name in ("first_name", "last_name", "email") and not isinstance(value, str):
            raise ApplyError(f"{name} must be a string")
        if isinstance(value, str):
            _check_text(model, name, value)
        values[name] = value
    return values


def _check_text(model: type[models.Model], name: str, value: str) -> None:
    """Refuse here what this database would refuse (PostgreSQL) or silently keep (SQLite): one clear error."""
    try:
        limit = getattr(model._meta.get_field(name), "max_length", None)
    except FieldDoesNotExist:
        limit = None  # a field this user model does not have
    if limit and len(value) > limit:
        raise ApplyError(f"{name} is {len(value)} characters long, more than this client's {limit}")
    if "\x00" in value:
        raise ApplyError(f"{name} contains a NUL character")


def profile_of(instance: models.Model, key: str, version: int) -> dict[str, Any]:
    return {
        "key": key,
        "version": version,
        "username": getattr(instance, "username", ""),
        "first_name": getattr(instance, "first_name", ""),
        "last_name": getattr(instance, "last_name", ""),
        "email": getattr(instance, "email", ""),
        "is_active": getattr(instance, "is_active", True),
    }


def master_key_of(local_pk: Any, model: str = USER_MODEL, using: str = "default") -> tuple[str, int] | None:
    """(master key, version) of a local row, or None for a row that is not a replica."""
    state = (
        ReplicaState.objects.using(using)
        .filter(model=model, local_pk=str(local_pk), deleted=False)
        .values_list("key", "version")
        .first()
    )
    return (state[0], int(state[1])) if state else None
