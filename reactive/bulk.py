"""Capture for the QuerySet methods that skip Django's signals: update(), bulk_update() and bulk_create().

``User.objects.filter(...).update(is_active=False)`` sends no post_save, so signal-based capture alone
would leave every client stale. While a model is tracked, ``QuerySet.update``, ``bulk_update`` and
``bulk_create`` are wrapped (once, for every model: the wrappers hand an untracked model straight to Django):

- update() locks the matching rows (in key order), reads their tracked values, updates exactly those
  rows and reads them again, then decides each row's event as a save would (update; delete when a row
  stops qualifying; insert when it starts), all in one transaction. An update that sets neither a
  tracked column nor one the built-in predicates read (``last_login``, say) stays Django's one query;
  with a custom predicate every update is captured, since it may read any column.
- bulk_update() runs through update(); afterwards each object's snapshot is what was stored, so its
  next save() is diffed against the truth.
- bulk_create() records an insert for every created row that qualifies; with ``update_conflicts`` the
  rows it met are read by ``unique_fields`` before and after, so they get their update. With
  ``ignore_conflicts`` the database does not say which rows it inserted, so it is refused before any write.
- An update that sets the primary key is refused: clients know a user by it.
- A deletion's ``on_delete=SET_DEFAULT`` or ``SET(callable)`` writes the rows it read with
  ``UpdateQuery.update_batch`` (``SET_NULL`` and ``SET(value)`` use update()): for a tracked model it is
  run as an update() of those rows, so a tracked foreign key reset that way reaches the clients.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.db import NotSupportedError, connections, models, transaction
from django.db.models import Q, QuerySet
from django.db.models.sql.subqueries import UpdateQuery

from reactive import capture
from reactive.capture import Tracking

CHUNK = 500  # rows read, updated and read again at a time: within every backend's parameter limit
Snapshots = dict[Any, dict[str, Any]]

_originals: dict[str, Callable[..., Any]] = {}
# bulk_update() collects here the snapshots its inner update() calls read after writing.
_stored_after: contextvars.ContextVar[Snapshots | None] = contextvars.ContextVar("stored_after", default=None)


_WRAPPED: tuple[tuple[type, str, Callable[..., Any]], ...] = ()  # (class, method, wrapper), set below


def install() -> None:
    """Wrap QuerySet.update, bulk_update, bulk_create and UpdateQuery.update_batch (idempotent)."""
    if _originals:
        return
    for owner, name, wrapper in _WRAPPED:
        original = getattr(owner, name)
        _originals[name] = original
        setattr(owner, name, functools.wraps(original)(wrapper))


def uninstall() -> None:
    for owner, name, _ in _WRAPPED:
        if name in _originals:
            setattr(owner, name, _originals.pop(name))


def _captured(queryset: QuerySet[Any]) -> Tracking | None:
    tracking = capture.tracking_for(queryset.model)
    if tracking is None:
        return None
    queryset._for_write = True  # as Django's own update()/bulk_create() do: route to the write database
    return tracking if tracking.captures(queryset.db) else None


def _update(self: QuerySet[Any], **values: Any) -> int:
    tracking = _captured(self)
    if tracking is None:
        return _originals["update"](self, **values)
    meta = self.model._meta  # a multi-table child's own columns are neither tracked nor judged
    columns = {_field(meta, name).name for name in values}
    if meta.pk.name in columns or tracking.model._meta.pk.name in columns:
        raise NotSupportedError(
            f"update() of the primary key of {tracking.label} rows cannot be synced: clients know a user by it"
        )
    if not tracking.may_change(columns):
        return _originals["update"](self, **values)
    self._not_support_combined_queries("update")  # Django's own refusals, before any lock is taken
    if self.query.is_sliced:
        raise TypeError("Cannot update a query once a slice has been taken.")
    using = self.db
    base = tracking.model._base_manager.using(using)
    stored = _stored_after.get()
    updated = 0
    with transaction.atomic(using=using, savepoint=False):
        for chunk in _chunks(_lock_keys(base.filter(pk__in=self.order_by().values("pk")))):
            before = _snapshots(base.filter(pk__in=chunk), tracking)
            updated += _originals["update"](self.filter(pk__in=chunk), **values)  # keeps its annotations
            after = _record_changes(tracking, before, base.filter(pk__in=chunk).order_by("pk"), using)
            if stored is not None:
                stored.update(after)
    return updated


def _field(meta: Any, name: str) -> Any:
    """A field by name or attname, "pk" included (as QuerySet methods accept them)."""
    return meta.pk if name == "pk" else meta.get_field(name)


def _lock_keys(rows: QuerySet[Any]) -> list[Any]:
    """Lock ``rows`` (of the model itself, no joins) in key order, so that concurrent updates cannot deadlock."""
    return list(rows.order_by("pk").select_for_update().values_list("pk", flat=True))


def _chunks(keys: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(keys), CHUNK):
        yield keys[start : start + CHUNK]


def _snapshots(rows: Iterable[models.Model], tracking: Tracking) -> Snapshots:
    return {row.pk: capture.snapshot(row, tracking) for row in rows}


def _record_changes(
    tracking: Tracking, before: Snapshots, after: Iterable[models.Model], using: str
) -> Snapshots:
    """Write each row's event (the one a save would give it); returns the rows' snapshots as written."""
    from reactive.outbox import new_row, record_many

    written = _snapshots(after, tracking)
    rows = []
    for key, values in written.items():
        action, changed = capture.decide(before.get(key), values)
        if action is not None:
            rows.append(new_row(tracking.label, action, str(key), capture.serialize(values), changed))
    record_many(rows, using=using)
    return written


def _bulk_update(self: QuerySet[Any], objs: Iterable[models.Model], *args: Any, **kwargs: Any) -> int:
    tracking = _captured(self)
    if tracking is None:
        return _originals["bulk_update"](self, objs, *args, **kwargs)
    objs = list(objs)
    stored: Snapshots = {}
    token = _stored_after.set(stored)
    try:
        updated = _originals["bulk_update"](self, objs, *args, **kwargs)
    finally:
        _stored_after.reset(token)
    for obj in objs:
        if obj.pk in stored:
            capture.keep_snapshot(obj, stored[obj.pk], self.db)
    return updated


def _bulk_create(self: QuerySet[Any], objs: Iterable[models.Model], *args: Any, **kwargs: Any) -> Any:
    tracking = _captured(self)
    objs = list(objs)
    if tracking is None or not objs:
        return _originals["bulk_create"](self, objs, *args, **kwargs)
    options = inspect.signature(_originals["bulk_create"]).bind(self, objs, *args, **kwargs).arguments
    if options.get("ignore_conflicts"):
        raise NotSupportedError(
            f"bulk_create(ignore_conflicts=True) on {tracking.label} cannot be synced: the database does "
            "not say which rows it inserted. Use update_conflicts=True with unique_fields, or "
            "get_or_create() per row."
        )
    unique = options.get("unique_fields") if options.get("update_conflicts") else None
    using = self.db
    with transaction.atomic(using=using, savepoint=False):
        before = _snapshots(_rows_by_unique(tracking, objs, unique, using), tracking) if unique else {}
        created = _originals["bulk_create"](self, objs, *args, **kwargs)
        after = _rows_by_unique(tracking, objs, unique, using) if unique else objs
        if any(row.pk is None for row in after):  # raising here rolls the insert back: nothing is lost
            raise NotSupportedError(
                f"bulk_create() on {tracking.label} cannot be synced on {connections[using].vendor}: "
                "it does not return the new rows' keys. Save the rows one by one."
            )
        stored = _record_changes(tracking, before, after, using)  # a row that met a conflict: read back
    for obj in objs:
        if obj.pk in stored:
            capture.keep_snapshot(obj, stored[obj.pk], using)
    return created


def _rows_by_unique(
    tracking: Tracking, objs: Sequence[models.Model], unique: Sequence[str], using: str
) -> list[models.Model]:
    """The stored rows that share ``unique`` values with ``objs``, locked, in key order."""
    meta = tracking.model._meta
    attnames = [_field(meta, name).attname for name in unique]
    base = tracking.model._base_manager.using(using)
    keys: list[Any] = []
    for group in _chunks(objs):
        matches = Q()
        for obj in group:
            matches |= Q(**{att: getattr(obj, att) for att in attnames})
        keys.extend(_lock_keys(base.filter(matches)))
    keys = sorted(set(keys))
    return [row for chunk in _chunks(keys) for row in base.filter(pk__in=chunk).order_by("pk")]


def _update_batch(self: UpdateQuery, pk_list: Sequence[Any], values: dict[str, Any], using: str) -> None:
    """Django's deletion Collector sets ``values`` on these rows (on_delete=SET_DEFAULT, SET(callable))."""
    tracking = capture.tracking_for(self.model)
    if tracking is None or not tracking.captures(using):
        _originals["update_batch"](self, pk_list, values, using)
        return
    rows = self.model._base_manager.using(using)
    # In chunks (as Django's own does: a deletion may reset many rows), in key order, as every captured
    # update locks: two lockers in one order cannot deadlock.
    for chunk in _chunks(sorted(pk_list)):
        rows.filter(pk__in=chunk).update(**values)


_WRAPPED = (
    (QuerySet, "update", _update),
    (QuerySet, "bulk_update", _bulk_update),
    (QuerySet, "bulk_create", _bulk_create),
    (UpdateQuery, "update_batch", _update_batch),
)
