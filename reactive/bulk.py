"""Capture for the QuerySet methods that skip Django's signals: update(), bulk_update() and bulk_create().

``User.objects.filter(...).update(is_active=False)`` sends no post_save, so signal-based capture alone
would leave every client stale. While a model is tracked, ``QuerySet.update`` and ``QuerySet.bulk_create``
are wrapped (once, for every model: the wrapper hands an untracked model straight to Django):

- update() locks the matching rows, reads their tracked values, updates exactly those rows and reads them
  again, then decides each row's event as a save would (update, delete when a row stops qualifying,
  insert when it starts), all in one transaction. bulk_update() runs through update() and so is covered.
  An update that sets neither a tracked field nor one the sync predicate reads costs nothing extra.
- bulk_create() records an insert for every created row that qualifies; with ``update_conflicts`` the
  rows it met are read by ``unique_fields`` before and after, so they get their update. With
  ``ignore_conflicts`` the database does not say which rows it inserted, so it is refused before any
  write, with a message naming what to use instead.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.db import connections, models, transaction
from django.db.models import Q, QuerySet

from reactive import capture
from reactive.capture import Tracking

CHUNK = 500  # rows read, updated and read again at a time: within every backend's parameter limit
PREDICATE_READS: dict[Callable[..., bool], frozenset[str]] = {
    capture.always: frozenset(),
    capture.non_staff: frozenset({"is_staff"}),
}

_originals: dict[str, Callable[..., Any]] = {}


def install() -> None:
    """Wrap QuerySet.update and QuerySet.bulk_create (idempotent)."""
    if _originals:
        return
    _originals["update"] = QuerySet.update
    _originals["bulk_create"] = QuerySet.bulk_create
    QuerySet.update = functools.wraps(QuerySet.update)(_update)
    QuerySet.bulk_create = functools.wraps(QuerySet.bulk_create)(_bulk_create)


def uninstall() -> None:
    for name, original in _originals.items():
        setattr(QuerySet, name, original)
    _originals.clear()


def _captured(queryset: QuerySet[Any]) -> Tracking | None:
    tracking = capture.tracking_for(queryset.model)
    if tracking is None:
        return None
    queryset._for_write = True  # as Django's own update()/bulk_create() do: route to the write database
    return tracking if tracking.captures(queryset.db) else None


def _update(self: QuerySet[Any], **values: Any) -> int:
    tracking = _captured(self)
    if tracking is None or not _may_change_events(tracking, values):
        return _originals["update"](self, **values)
    self._not_support_combined_queries("update")  # Django's own refusals, before any lock is taken
    if self.query.is_sliced:
        raise TypeError("Cannot update a query once a slice has been taken.")
    using = self.db
    base = tracking.model._base_manager.using(using)
    updated = 0
    with transaction.atomic(using=using, savepoint=False):
        keys = _lock_keys(self, using)
        for chunk in _chunks(keys):
            rows = base.filter(pk__in=chunk)
            before = {row.pk: capture.snapshot(row, tracking) for row in rows}
            updated += _originals["update"](rows, **values)
            _record_changes(tracking, before, list(rows.all()), using)
    return updated


def _may_change_events(tracking: Tracking, values: dict[str, Any]) -> bool:
    """Whether these columns can change a tracked value or the predicate's verdict."""
    reads = PREDICATE_READS.get(tracking.predicate)
    if reads is None:  # a custom predicate may read anything
        return True
    meta = tracking.model._meta
    names = {meta.get_field(name).name for name in values}
    return bool(names & (set(tracking.fields) | reads))


def _lock_keys(queryset: QuerySet[Any], using: str) -> list[Any]:
    """The matching rows' keys, locked for the transaction, so that the rows updated are the rows read."""
    of = ("self",) if connections[using].features.has_select_for_update_of else ()
    locked = queryset.order_by().select_for_update(of=of).values_list("pk", flat=True)
    return list(dict.fromkeys(locked))  # a join can repeat a row


def _chunks(keys: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(keys), CHUNK):
        yield keys[start : start + CHUNK]


def _record_changes(
    tracking: Tracking, before: dict[Any, dict[str, Any]], after: Iterable[models.Model], using: str
) -> None:
    from reactive.outbox import record

    for row in sorted(after, key=lambda r: r.pk):
        values = capture.snapshot(row, tracking)
        action, changed = capture.decide(before.get(row.pk), values)
        if action is not None:
            record(tracking.label, action, str(row.pk), capture.serialize(values), changed, using=using)


def _bulk_create(self: QuerySet[Any], objs: Iterable[models.Model], *args: Any, **kwargs: Any) -> Any:
    tracking = _captured(self)
    if tracking is None:
        return _originals["bulk_create"](self, objs, *args, **kwargs)
    options = inspect.signature(_originals["bulk_create"]).bind(self, objs, *args, **kwargs).arguments
    if options.get("ignore_conflicts"):
        raise TypeError(
            f"bulk_create(ignore_conflicts=True) on {tracking.label} cannot be synced: the database does "
            "not say which rows it inserted. Use update_conflicts=True with unique_fields, or "
            "get_or_create() per row."
        )
    objs = list(objs)
    using = self.db
    with transaction.atomic(using=using, savepoint=False):
        unique = options.get("unique_fields") if options.get("update_conflicts") else None
        met = _rows_by_unique(self, tracking, objs, unique) if unique else []
        before = {row.pk: capture.snapshot(row, tracking) for row in met}
        created = _originals["bulk_create"](self, objs, *args, **kwargs)
        after = _rows_by_unique(self, tracking, objs, unique) if unique else objs
        if any(row.pk is None for row in after):  # raising here rolls the insert back: nothing is lost
            raise TypeError(
                f"bulk_create() on {tracking.label} cannot be synced on {connections[using].vendor}: "
                "it does not return the new rows' keys. Save the rows one by one."
            )
        _record_changes(tracking, before, after, using)
    for obj in objs:
        obj.__dict__[capture.SNAPSHOT_ATTR] = capture.snapshot(obj, tracking)
    return created


def _rows_by_unique(
    queryset: QuerySet[Any], tracking: Tracking, objs: Sequence[models.Model], unique: Sequence[str]
) -> list[models.Model]:
    """The stored rows that share ``unique`` values with ``objs``, locked."""
    meta = tracking.model._meta
    attnames = [meta.get_field(name).attname for name in unique]
    base = tracking.model._base_manager.using(queryset.db)
    keys: list[Any] = []
    for group in _chunks(objs):
        matches = Q()
        for obj in group:
            matches |= Q(**{att: getattr(obj, att) for att in attnames})
        keys.extend(_lock_keys(base.filter(matches), queryset.db))
    keys = list(dict.fromkeys(keys))
    return [row for chunk in _chunks(keys) for row in base.filter(pk__in=chunk)]
