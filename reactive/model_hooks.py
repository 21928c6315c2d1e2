"""The methods capture wraps on a tracked model, and how each keeps the snapshot of what is stored.

- ``from_db``: every instance the ORM loads gets the snapshot of its loaded tracked values. An instance
  built in code (``User(pk=5, ...)``) gets none: its values were never read from the database.
- ``refresh_from_db``: what it reloads joins the snapshot, so the next save diffs against what is stored
  now. Only a reload from the database saves are written to counts: a lagging read replica's values
  are dropped from the snapshot instead (a field unknown before counts as changed).
- ``save_base``: the row write and the outbox insert share one transaction.

Proxies inherit the wrapped methods from their concrete model.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models, router, transaction

from reactive import capture

METHODS = ("save_base", "from_db", "refresh_from_db")

# While refresh_from_db runs: (model, pk) of the instance refreshed, and where from_db puts the reloaded one.
_reloading: contextvars.ContextVar[tuple[type[models.Model], Any, list[models.Model]] | None] = (
    contextvars.ContextVar("reloading", default=None)
)
_own: dict[type[models.Model], dict[str, Any]] = {}  # each model's own attributes before wrapping


def install(model: type[models.Model]) -> None:
    if model in _own:
        return
    _own[model] = {name: model.__dict__[name] for name in METHODS if name in model.__dict__}
    model.save_base = _atomic(model.save_base)
    model.from_db = classmethod(_snapshotting(model.from_db.__func__))
    model.refresh_from_db = _resnapshotting(model.refresh_from_db)


def uninstall(model: type[models.Model]) -> None:
    own = _own.pop(model, None)
    if own is None:
        return
    for name in METHODS:
        if name in own:
            setattr(model, name, own[name])
        else:
            delattr(model, name)


def _atomic(save_base: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(save_base)
    def atomic_save_base(self: models.Model, *args: Any, **kwargs: Any) -> Any:
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using, savepoint=False):
            return save_base(self, *args, **kwargs)

    return atomic_save_base


def _snapshotting(from_db: Callable[..., models.Model]) -> Callable[..., models.Model]:
    @functools.wraps(from_db)
    def from_db_with_snapshot(cls: type[models.Model], *args: Any, **kwargs: Any) -> models.Model:
        instance = from_db(cls, *args, **kwargs)
        tracking = capture.tracking_for(cls)
        if tracking is not None:
            capture.keep_snapshot(instance, capture.snapshot(instance, tracking), instance._state.db)
            reloading = _reloading.get()
            if reloading is not None and reloading[0] is tracking.model and reloading[1] == instance.pk:
                reloading[2].append(instance)
        return instance

    return from_db_with_snapshot


def _resnapshotting(refresh_from_db: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(refresh_from_db)
    def refresh_and_resnapshot(self: models.Model, *args: Any, **kwargs: Any) -> None:
        tracking = capture.tracking_for(type(self))
        if tracking is None or self.pk is None:
            return refresh_from_db(self, *args, **kwargs)
        reloaded: list[models.Model] = []
        token = _reloading.set((tracking.model, _normal_key(tracking, self.pk), reloaded))
        try:
            refresh_from_db(self, *args, **kwargs)
        finally:
            _reloading.reset(token)
        if reloaded:  # none when only prefetched relations were cleared
            _join(self, tracking, reloaded[0])
        return None

    return refresh_and_resnapshot


def _normal_key(tracking: capture.Tracking, key: Any) -> Any:
    """The key as a loaded row holds it ("5" finds the row whose key is 5)."""
    try:
        return tracking.model._meta.pk.to_python(key)
    except ValidationError:
        return key  # Django's own lookup will refuse it


def _join(instance: models.Model, tracking: capture.Tracking, stored: models.Model) -> None:
    """Merge the reloaded values (``stored``'s snapshot) into ``instance``'s."""
    current, source = capture.current_snapshot(instance)
    old = current or {}
    fresh = stored.__dict__[capture.SNAPSHOT_ATTR]
    values = {name: value for name, value in fresh.items() if name != capture.SYNCED}
    if stored._state.db != router.db_for_write(type(instance), instance=instance):
        merged = {name: value for name, value in old.items() if name not in values}
        merged[capture.SYNCED] = old.get(capture.SYNCED)
    elif len(values) == len(tracking.fields):  # the whole tracked state, from where saves go
        merged, source = dict(fresh), stored._state.db
    else:
        merged = {**old, **values}
        verdict = fresh.get(capture.SYNCED)
        merged[capture.SYNCED] = verdict if verdict is not None else old.get(capture.SYNCED)
    # Undone with the transaction of the database saves go to, which a reload from a replica is not in.
    capture.keep_snapshot(
        instance, merged, source, read_on=router.db_for_write(type(instance), instance=instance)
    )
