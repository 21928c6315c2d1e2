"""Resync: the master sends its current state of every synced user to one client's queue.

Each chunk of users is written as outbox rows (``target`` = the client) in one transaction that first
locks the user rows (select_for_update). A live save of one of those users either committed before the
lock (its outbox row has a lower id) or waits for it (its row gets a higher id), so the version of a
sync row (its outbox id) orders correctly with live traffic, and applying is idempotent: a sync during
live traffic converges. The rows are then relayed by the ordinary relay, straight to that client's queue.

``prune``: the client must also drop replica users the master no longer has. The replica can only hold
keys the master once issued, so the master walks its whole key space, 1 .. the highest key it ever gave
(the larger of its sequence and of any key in its outbox), and sends a delete event for every key it
lacks (or holds but no longer syncs). The listener applies these like any delete: the row goes, a
tombstone stays, and a delete for a key the replica never had only leaves a tombstone. New users get
keys above the walked range, so no delete can overtake their insert (the range is read while user
inserts are held off: a table lock on PostgreSQL, the single writer on SQLite).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connections, models, transaction
from django.db.models import Max
from django.utils import timezone

from reactive import capture, settings
from reactive.dlq import queues_of
from reactive.errors import ReactiveError, UsageError
from reactive.outbox import OutboxEvent, relay_pending
from reactive.transport.base import Transport

Progress = Callable[[int], None]
DEFAULT_BATCH = 200
OTHER_RELAY_POLL_SECONDS = 0.05
_pause = time.sleep  # tests replace this, not the process-wide time.sleep


@dataclass
class SyncReport:
    client: str
    examined: int = 0  # keys looked at (users; with prune, the whole key space)
    updates: int = 0  # rows carrying a user's current state
    deletes: int = 0  # prune: rows deleting a key the master lacks
    sent: int = 0
    pending: int = 0  # written but not relayed yet (the outbox sweep retries them)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "examined": self.examined,
            "updates": self.updates,
            "deletes": self.deletes,
            "sent": self.sent,
            "pending": self.pending,
            "errors": self.errors,
        }


def tracking() -> capture.Tracking:
    """What the master syncs: the registered capture of the user model, else the settings' description."""
    from django.conf import settings as django_settings
    from django.utils.module_loading import import_string

    user = get_user_model()
    found = capture.tracking_for(user)
    if found is not None:
        return found
    fields = tuple(getattr(django_settings, "REACTIVE_TRACKED_FIELDS", capture.DEFAULT_USER_FIELDS))
    predicate = import_string(getattr(django_settings, "REACTIVE_SYNC_PREDICATE", capture.DEFAULT_PREDICATE))
    return capture.Tracking(user, capture.event_label(user), fields, predicate)


def plan(*, prune: bool, using: str = "default") -> list[Any]:
    """The keys to examine, in order: every user's pk, or with ``prune`` the whole key space."""
    manager = get_user_model()._default_manager.using(using)
    if not prune:
        return list(manager.order_by("pk").values_list("pk", flat=True))
    return list(range(1, highest_key(using) + 1))


def highest_key(using: str = "default") -> int:
    """The highest user key the master ever issued, read while no user insert is in progress."""
    user = get_user_model()
    if not isinstance(user._meta.pk, models.AutoField | models.BigAutoField | models.IntegerField):
        raise UsageError("--prune walks integer user keys; this user model's primary key is not an integer")
    with transaction.atomic(using=using):
        _hold_inserts(user, using)
        top = user._default_manager.using(using).aggregate(top=Max("pk"))["top"] or 0
        label = capture.event_label(user)
        keys = OutboxEvent.objects.using(using).filter(model=label).values_list("key", flat=True).distinct()
        top = max([top, last_issued_key(user, using) or 0, *(int(k) for k in keys if k.isdigit())])
    return int(top)


def _hold_inserts(model: type[models.Model], using: str) -> None:
    """Until the transaction ends, no row of ``model`` is inserted; inserts under way finish first."""
    connection = connections[using]
    table = connection.ops.quote_name(model._meta.db_table)
    pk = connection.ops.quote_name(model._meta.pk.column)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # SHARE conflicts with the ROW EXCLUSIVE lock of an INSERT: in-flight inserts finish first.
            cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
        elif connection.vendor == "sqlite":
            # A write statement takes SQLite's single write lock (whatever the transaction mode).
            cursor.execute(f"UPDATE {table} SET {pk} = {pk} WHERE 1 = 0")


def last_issued_key(model: type[models.Model], using: str) -> int | None:
    """The last key the database handed out for ``model``, deleted rows included: 0 before the first,
    None where it cannot say (a database other than SQLite and PostgreSQL, a key with no sequence)."""
    connection = connections[using]
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE name = 'sqlite_sequence'")
            if cursor.fetchone() is None:
                return 0
            cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = %s", [table])
        elif connection.vendor == "postgresql":
            column = model._meta.pk.column
            cursor.execute(
                "SELECT pg_get_serial_sequence(%s, %s)", [connection.ops.quote_name(table), column]
            )
            sequence = cursor.fetchone()
            if not sequence or not sequence[0]:
                return None
            cursor.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence[0]}")
        else:
            return None
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def advance_key(model: type[models.Model], using: str, past: int) -> int | None:
    """Make the next key the database hands out for ``model`` greater than ``past`` (never lower it);
    returns the last key issued afterwards, or None where it cannot say (see last_issued_key)."""
    connection = connections[using]
    with transaction.atomic(using=using):
        _hold_inserts(model, using)  # no id is taken between the read and the move
        current = last_issued_key(model, using)
        if current is None or current >= past:
            return current
        table = model._meta.db_table
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                quoted = connection.ops.quote_name(table)
                cursor.execute(
                    "SELECT setval(pg_get_serial_sequence(%s, %s), %s)", [quoted, model._meta.pk.column, past]
                )
            else:  # SQLite (last_issued_key knows no other)
                cursor.execute("UPDATE sqlite_sequence SET seq = %s WHERE name = %s", [past, table])
                if cursor.rowcount == 0:
                    cursor.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)", [table, past])
    return past


def write_chunk(
    spec: capture.Tracking, client: str, keys: Sequence[Any], *, prune: bool, using: str = "default"
) -> tuple[list[int], int, int]:
    """Outbox rows for one chunk of keys, written under the users' row locks; (row ids, updates, deletes)."""
    manager = spec.model._default_manager.using(using)
    with transaction.atomic(using=using):
        # In key order, as captured updates lock them (bulk.py): two lockers in one order cannot deadlock.
        locked = manager.select_for_update().filter(pk__in=list(keys)).order_by("pk")
        users = {u.pk: u for u in locked}
        rows = []
        for key in keys:
            user = users.get(key)
            if user is not None and spec.predicate(user):
                data = capture.serialize(capture.snapshot(user, spec))
                rows.append(_row(spec.label, "update", key, data, spec.fields, client))
            elif prune:
                rows.append(_row(spec.label, "delete", key, {}, (), client))
        created = OutboxEvent.objects.using(using).bulk_create(rows)
    updates = sum(1 for r in rows if r.action == "update")
    return [r.id for r in created if r.id is not None], updates, len(rows) - updates


def _row(
    label: str, action: str, key: Any, data: dict[str, Any], changed: Sequence[str], client: str
) -> OutboxEvent:
    return OutboxEvent(
        model=label,
        action=action,
        key=str(key),
        data=data,
        changed=list(changed),
        event_id=uuid.uuid4(),
        target=client,
    )


def relay_rows(transport: Transport, ids: Sequence[int], *, using: str = "default") -> tuple[int, str]:
    """Relay until these rows are sent, or a round sends nothing of them; (sent, last error).

    Another relay may hold them: the one their commit asked for, or the sweep. A round that finds them
    held waits for that relay (one lease at most) instead of calling them pending.
    """
    unsent = OutboxEvent.objects.using(using).filter(id__in=list(ids), sent_at__isnull=True)
    remaining = unsent.count()
    error = ""
    mine = {str(i) for i in ids}
    while remaining:
        result = relay_pending(transport, limit=max(100, len(ids)), using=using)
        failed = [reason for row, reason in result.errors.items() if row in mine]  # not other rows' failures
        if failed:
            error = failed[0]
        now = unsent.count()
        if now == remaining and (failed or not _outwait_other_relay(unsent)):
            break
        remaining = unsent.count()
    if remaining and not error:  # failed in another relay's hands: say why all the same
        error = unsent.exclude(last_error="").values_list("last_error", flat=True).first() or ""
    return len(ids) - remaining, error


def _outwait_other_relay(unsent: models.QuerySet[OutboxEvent]) -> bool:
    """Wait while another relay holds some of these rows; True when a relay round may now send some.

    Held means leased and never failed: a lease moves ``next_attempt_at`` ahead without an error, a
    failure records one and backs the row off, which no wait here would shorten.
    """
    deadline = time.monotonic() + settings.float_setting("REACTIVE_RELAY_LEASE", 60.0) + 1
    while time.monotonic() < deadline:
        if not unsent.filter(next_attempt_at__gt=timezone.now(), last_error="").exists():
            return not unsent.exists() or unsent.filter(next_attempt_at__lte=timezone.now()).exists()
        _pause(OTHER_RELAY_POLL_SECONDS)
    return False


def sync(
    client: str,
    transport: Transport,
    *,
    batch: int = DEFAULT_BATCH,
    prune: bool = False,
    progress: Progress | None = None,
    keys: Sequence[Any] | None = None,
    using: str = "default",
) -> SyncReport:
    """Send the master's current state of every synced user to one client's queue (keys: ``plan()``)."""
    queues_of(transport, client)  # a wrong client name or a missing queue fails here, clearly
    spec = tracking()
    report = SyncReport(client)
    for chunk in _chunks(plan(prune=prune, using=using) if keys is None else keys, batch):
        ids, updates, deletes = write_chunk(spec, client, chunk, prune=prune, using=using)
        report.examined += len(chunk)
        report.updates += updates
        report.deletes += deletes
        sent, error = relay_rows(transport, ids, using=using)
        report.sent += sent
        report.pending += len(ids) - sent
        if error and error not in report.errors:
            report.errors.append(error)
        if progress:
            progress(len(chunk))
    return report


def _chunks(keys: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    if size < 1:
        raise ReactiveError("--batch must be at least 1")
    for start in range(0, len(keys), size):
        yield keys[start : start + size]
