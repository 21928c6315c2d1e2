"""Change detection on a model: tracked fields, a sync predicate, a pure diff, and the signals that write the outbox.

The tracked values are snapshotted when an instance is loaded, refreshed or saved (reactive.model_hooks), so
a save is diffed in pure code with no extra SELECT, and a registered model's row write and outbox insert
commit (or roll back) together. QuerySet.update(), bulk_update() and bulk_create(), which send no signals,
are captured by reactive.bulk.
"""

from __future__ import annotations

import base64
import copy
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import models
from django.db.models.signals import post_delete, post_save, pre_delete
from django.utils.duration import duration_iso_string

from reactive import commits
from reactive.events import USER_MODEL, format_time

DEFAULT_USER_FIELDS = ("username", "first_name", "last_name", "email", "is_active", "is_staff", "date_joined")
NEVER_TRACKED = frozenset({"password", "last_login"})
# REACTIVE_SYNC_PREDICATE's default: staff users stay on the master.
DEFAULT_PREDICATE = "reactive.capture.non_staff"
SNAPSHOT_ATTR = "_reactive_snapshot"
SNAPSHOT_DB_ATTR = "_reactive_snapshot_db"  # the database alias the snapshot's values were read from
SNAPSHOT_TOKEN_ATTR = "_reactive_snapshot_token"  # the transaction the snapshot holds only if it commits
DELETE_VERDICT_ATTR = "_reactive_delete_synced"  # set by pre_delete when the snapshot's verdict was doubted
SYNCED = "__synced__"
UNKNOWN: Mapping[str, Any] = {SYNCED: None}  # a snapshot of nothing: every field counts as changed

Predicate = Callable[[models.Model], bool]


def always(instance: models.Model) -> bool:
    return True


def non_staff(instance: models.Model) -> bool:
    """The original prototype's rule: staff users stay on the master."""
    return not getattr(instance, "is_staff", False)


# The columns each built-in predicate reads; a custom predicate may read any.
PREDICATE_READS: dict[Callable[..., bool], frozenset[str]] = {
    always: frozenset(),
    non_staff: frozenset({"is_staff"}),
}


@dataclass(frozen=True)
class Tracking:  # noqa: B903
    model: type[models.Model]
    label: str  # the events' model name: event_label(model)
    fields: tuple[str, ...]
    predicate: Predicate
    databases: frozenset[str] | None = None  # capture saves on these aliases only (None: every alias)

    def captures(self, using: str) -> bool:
        return self.databases is None or using in self.databases

    @functools.cached_property
    def attnames(self) -> dict[str, str]:
        return {name: self.model._meta.get_field(name).attname for name in self.fields}

    @functools.cached_property
    def predicate_attnames(self) -> frozenset[str] | None:
        """The columns the predicate reads, when known (a built-in one)."""
        reads = PREDICATE_READS.get(self.predicate)
        return None if reads is None else frozenset(self.model._meta.get_field(n).attname for n in reads)

    def may_change(self, columns: set[str]) -> bool:
        """Whether writing these columns can change a tracked value or the predicate's verdict."""
        return bool(columns & set(self.fields)) or self.may_change_verdict(columns)

    def may_change_verdict(self, columns: set[str]) -> bool:
        reads = PREDICATE_READS.get(self.predicate)
        return reads is None or bool(columns & reads)  # a custom predicate may read anything

    def can_judge(self, loaded: Mapping[str, Any]) -> bool:
        """Whether the predicate can be asked without loading anything (a custom one may read any tracked field)."""
        reads = self.predicate_attnames if self.predicate_attnames is not None else self.attnames.values()
        return all(att in loaded for att in reads)


_registry: dict[type[models.Model], Tracking] = {}


def track(
    model: type[models.Model],
    fields: Iterable[str] | None = None,
    predicate: Predicate | None = None,
    databases: Iterable[str] | None = None,
) -> Tracking:
    """Register a model for change capture. Idempotent per model.

    ``databases`` limits capture to the master's own aliases, for a process that also holds replicas.
    """
    model = model._meta.concrete_model or model  # tracking a proxy tracks the rows it stands for
    chosen = tuple(fields or DEFAULT_USER_FIELDS)
    forbidden = NEVER_TRACKED.intersection(chosen)
    if forbidden:
        raise ValueError(f"these fields are never synced: {sorted(forbidden)}")
    for name in chosen:
        field = model._meta.get_field(name)  # raises FieldDoesNotExist early, at start-up
        if not field.concrete or field.many_to_many:
            raise ValueError(
                f"{model._meta.label}.{name} is not a column of its own: only those can be tracked"
            )
    from reactive import bulk, model_hooks  # they import this module

    aliases = frozenset(databases) if databases is not None else None
    tracking = Tracking(model, event_label(model), chosen, predicate or always, aliases)
    if model not in _registry:
        for sender in _model_and_descendants(model):  # their signals name them, not the tracked model
            uid = sender._meta.label_lower
            post_save.connect(_on_save, sender=sender, weak=False, dispatch_uid=f"reactive-save-{uid}")
            pre_delete.connect(
                _before_delete, sender=sender, weak=False, dispatch_uid=f"reactive-pre-delete-{uid}"
            )
            post_delete.connect(_on_delete, sender=sender, weak=False, dispatch_uid=f"reactive-delete-{uid}")
        model_hooks.install(model)  # proxies inherit the wrapped methods
    _registry[model] = tracking
    _lookups.clear()
    bulk.install()
    return tracking


def untrack(model: type[models.Model]) -> None:
    model = model._meta.concrete_model or model
    tracking = _registry.pop(model, None)
    if tracking is None:
        return
    _lookups.clear()
    from reactive import bulk, model_hooks

    for sender in _model_and_descendants(model):
        uid = sender._meta.label_lower
        for signal, name in ((post_save, "save"), (pre_delete, "pre-delete"), (post_delete, "delete")):
            signal.disconnect(sender=sender, dispatch_uid=f"reactive-{name}-{uid}")
    model_hooks.uninstall(model)
    if not _registry:
        bulk.uninstall()


def event_label(model: type[models.Model]) -> str:
    """The model name events carry: the user model is "auth.user" on the wire, whatever AUTH_USER_MODEL is."""
    return USER_MODEL if model is get_user_model() else model._meta.label_lower


_lookups: dict[type[models.Model], Tracking | None] = {}  # every model asked about; cleared by (un)track


def tracking_for(model: type[models.Model]) -> Tracking | None:
    """The tracking of the model's rows: its own, or a tracked ancestor's (proxies, multi-table children)."""
    try:
        return _lookups[model]
    except KeyError:
        pass
    found = None
    for candidate in (model._meta.concrete_model, *model._meta.get_parent_list()):
        found = _registry.get(candidate)
        if found is not None:
            break
    _lookups[model] = found
    return found


def _model_and_descendants(model: type[models.Model]) -> list[type[models.Model]]:
    """A tracked model and the models whose rows are also its rows: proxies and multi-table children."""
    return [model, *(m for m in apps.get_models() if m is not model and issubclass(m, model))]


def tracked_models() -> list[Tracking]:
    return list(_registry.values())


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[str, ...]:
    """Tracked field names whose values differ; a field unknown before counts as changed."""
    return tuple(k for k in after if k != SYNCED and (k not in before or before[k] != after[k]))


def snapshot(instance: models.Model, tracking: Tracking) -> dict[str, Any]:
    """The loaded tracked values (deferred fields are left out, so loading stays lazy), and the verdict.

    The verdict (SYNCED) is None when the predicate could only be asked by loading a deferred field.
    """
    loaded = instance.__dict__
    values = {name: _kept(loaded[att]) for name, att in tracking.attnames.items() if att in loaded}
    values[SYNCED] = tracking.predicate(instance) if tracking.can_judge(loaded) else None
    return values


def _kept(value: Any) -> Any:
    """A value as the snapshot keeps it: a copy of a mutable one (a JSONField's dict, an ArrayField's list),
    which code may change in place before the save that the snapshot is diffed against."""
    return copy.deepcopy(value) if isinstance(value, dict | list | set | bytearray) else value


def _holds_expression(values: Mapping[str, Any]) -> bool:
    """A field set to F(), Lower(), ...: the instance holds the expression, only the row holds the value."""
    return any(hasattr(value, "resolve_expression") for value in values.values())


def serialize(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _json_value(v) for k, v in values.items() if k != SYNCED}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_time(value) if value.tzinfo else value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return duration_iso_string(value)  # what Django's JSON encoder writes: P1DT02H00M00S
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def _record(*args: Any, **kwargs: Any) -> Any:
    from reactive.outbox import record  # the outbox defines a model: import it once apps are loaded

    return record(*args, **kwargs)


def _on_save(
    sender: type[models.Model], instance: models.Model, created: bool, raw: bool, using: str, **kwargs: Any
) -> None:
    # A raw save (loaddata, a test database restored) is not captured, as Django advises for raw saves: a
    # data migration's fixture may load before the outbox table exists. `reactive sync` sends what it
    # changed (README: Operations).
    tracking = tracking_for(sender)
    if tracking is None or raw or not tracking.captures(using):
        return
    before = None if created else known_before(instance, using)
    update_fields = kwargs.get("update_fields")
    written = None
    if update_fields is not None and before is not None:  # save(update_fields=...), or of a deferred instance
        written = {instance._meta.get_field(name).name for name in update_fields}
        partial = _after_partial_save(instance, tracking, before, written, using)
        if partial is None:
            return
        after = partial
    else:
        after = snapshot(instance, tracking)
        # A deferred tracked field (saved to another database), or a field set to an expression: read back.
        if after[SYNCED] is None or _holds_expression(after):
            after = _stored(instance, tracking, using)
    action, changed = decide(before, after)
    if action == "update" and written is not None:  # what changed elsewhere went out with its own event
        changed = tuple(name for name in changed if name in written)
        action = action if changed else None
    if action is not None:
        _record(tracking.label, action, str(instance.pk), serialize(after), changed, using=using)
    keep_snapshot(instance, after, using)


def known_before(instance: models.Model, using: str) -> Mapping[str, Any]:
    """The snapshot a change to a stored row is diffed against, or UNKNOWN.

    Unknown: the instance was built in code (never loaded), or loaded from another database than the one
    written to (a read replica may lag). Every field then counts as changed, and a row that is not synced
    now gets a delete, since the clients may hold it.
    """
    before, source = current_snapshot(instance)
    if before is None or source != using:
        return UNKNOWN
    return before


def current_snapshot(instance: models.Model) -> tuple[Mapping[str, Any] | None, str | None]:
    """The snapshot of what is stored and the alias it was read from, when it can be trusted.

    One taken in a transaction that did not commit (or whose commit cannot be told, commits.py) is
    dropped: every field then counts as changed, so the next save publishes the whole state.
    """
    state = instance.__dict__
    token: commits.Token | None = state.get(SNAPSHOT_TOKEN_ATTR)
    if token is not None and not token.open():
        if not token.committed:
            state[SNAPSHOT_ATTR], state[SNAPSHOT_DB_ATTR] = None, None
        state[SNAPSHOT_TOKEN_ATTR] = None  # committed, or dropped: either way settled
    return state.get(SNAPSHOT_ATTR), state.get(SNAPSHOT_DB_ATTR)


def keep_snapshot(
    instance: models.Model, values: Mapping[str, Any], source: str | None, *, read_on: str | None = None
) -> None:
    """Make ``values`` (read from ``source``) the snapshot; in a transaction open on ``read_on`` (default
    ``source``), only until that transaction turns out not to have committed."""
    alias = read_on or source
    state = instance.__dict__
    state[SNAPSHOT_ATTR], state[SNAPSHOT_DB_ATTR] = values, source
    state[SNAPSHOT_TOKEN_ATTR] = commits.current(alias) if alias is not None else None


def _after_partial_save(
    instance: models.Model, tracking: Tracking, before: Mapping[str, Any], names: set[str], using: str
) -> dict[str, Any] | None:
    """The stored tracked values after a save that wrote only the fields ``names``; None when it changed none.

    The columns it did not write hold what is stored, which is not what this instance holds when it was
    changed in memory or elsewhere since it was loaded. An event carries the whole stored state, so only
    here, when something tracked did change, is the row read back (once, locked by the UPDATE). A save of
    a deferred instance comes here too: Django writes only its loaded fields.
    """
    if not tracking.may_change(names):
        return None  # last_login, say: nothing tracked or judged was written
    loaded = instance.__dict__
    attnames = tracking.attnames
    written = {
        name: loaded[attnames[name]] for name in names & set(tracking.fields) if attnames[name] in loaded
    }
    verdict = tracking.predicate(instance) if tracking.may_change_verdict(names) else before.get(SYNCED)
    if verdict == before.get(SYNCED) and all(before.get(name) == value for name, value in written.items()):
        return None
    return _stored(instance, tracking, using)


def _stored(instance: models.Model, tracking: Tracking, using: str) -> dict[str, Any]:
    """Read the row back (locked by the write just made) and snapshot it."""
    return snapshot(type(instance)._base_manager.using(using).get(pk=instance.pk), tracking)


def decide(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    """Which event a save emits: insert, update, delete (stopped qualifying) or none (pure)."""
    now_synced = after.get(SYNCED) is not False
    if before is None:
        return ("insert", tuple(k for k in after if k != SYNCED)) if now_synced else (None, ())
    was_synced = before.get(SYNCED) is not False
    changed = diff(before, after)
    if was_synced and now_synced:
        return ("update", changed) if changed else (None, ())
    if was_synced:
        return "delete", changed
    if now_synced:
        return "insert", tuple(k for k in after if k != SYNCED)
    return None, ()


def _on_delete(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    tracking = tracking_for(sender)
    if tracking is None or not tracking.captures(using):
        return
    if sender._meta.concrete_model is not tracking.model:
        return  # a multi-table child: the delete of its parent row, which Django signals too, is the event
    if instance.__dict__.pop(DELETE_VERDICT_ATTR, None) is False:
        return  # never on the clients
    _record(tracking.label, "delete", str(instance.pk), {}, (), using=using)


def _before_delete(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    """Whether the row about to be deleted was ever on the clients, for _on_delete.

    Only a snapshot that says "not synced" is doubted: the instance may have been loaded before another
    writer made the row qualify (and the clients got an insert); QuerySet.delete() loads its rows before
    its transaction, unlocked. So the row itself is read, locked until the delete commits (pre_delete
    runs in the delete's transaction): one query per delete of a row that was not synced when loaded.
    """
    # A verdict left by a delete that did not happen (another receiver vetoed it, the DELETE failed) is
    # no verdict on this one.
    instance.__dict__.pop(DELETE_VERDICT_ATTR, None)
    tracking = tracking_for(sender)
    if tracking is None or not tracking.captures(using) or sender._meta.concrete_model is not tracking.model:
        return
    if known_before(instance, using).get(SYNCED) is not False:
        return
    stored = type(instance)._base_manager.using(using).select_for_update().filter(pk=instance.pk).first()
    instance.__dict__[DELETE_VERDICT_ATTR] = stored is not None and bool(tracking.predicate(stored))
