"""The transactional outbox: rows written with the change, relayed to SNS in batches, retried, pruned.

An event's version is its outbox row id. The row write locks the user row before the outbox insert,
so two transactions on one user commit in id order: versions increase per key without a counter table.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, models, transaction
from django.db.models import Min, Q
from django.utils import timezone

from reactive import settings
from reactive.errors import ReactiveError, TransportError
from reactive.events import Event, encode
from reactive.transport.base import BATCH_LIMIT, OutgoingMessage, Transport, packed

log = logging.getLogger("reactive.outbox")
TOPIC = ""  # target of rows that go to the topic (every client); otherwise a client name (resync)


class OutboxEvent(models.Model):
    id = models.BigAutoField(primary_key=True)
    model = models.CharField(max_length=100)
    action = models.CharField(max_length=10)
    key = models.CharField(max_length=255)
    data = models.JSONField(default=dict)
    changed = models.JSONField(default=list)
    event_id = models.UUIDField(unique=True, editable=False)
    occurred_at = models.DateTimeField(default=timezone.now)
    target = models.CharField(max_length=60, blank=True, default=TOPIC)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        app_label = "reactive"
        indexes = [
            models.Index(
                fields=["next_attempt_at"], condition=Q(sent_at__isnull=True), name="reactive_outbox_due"
            ),
            models.Index(fields=["sent_at"], name="reactive_outbox_sent"),
        ]

    def __str__(self) -> str:
        return f"{self.model} {self.action} {self.key} v{self.id}"

    def to_event(self) -> Event:
        return Event(
            model=self.model,
            action=self.action,
            key=self.key,
            version=self.id,
            data=self.data,
            changed=tuple(self.changed),
            event_id=str(self.event_id),
            occurred_at=self.occurred_at,
        )


@dataclass
class RelayResult:
    sent: int = 0
    failed: int = 0
    errors: dict[str, str] = field(default_factory=dict)


def record(
    model: str,
    action: str,
    key: str,
    data: dict[str, Any],
    changed: Sequence[str],
    *,
    using: str,
    target: str = TOPIC,
) -> OutboxEvent:
    """Write one outbox row in the caller's transaction and relay it once that transaction commits."""
    row = new_row(model, action, key, data, changed, target=target)
    _insert(row, using)
    relay_on_commit(using)
    return row


def record_many(rows: Sequence[OutboxEvent], *, using: str) -> None:
    """Write ``new_row`` rows with bulk_create where the database returns their ids (versions), else one by one."""
    if not rows:
        return
    if connections[using].features.can_return_rows_from_bulk_insert:
        OutboxEvent.objects.using(using).bulk_create(rows)
    else:
        for row in rows:
            _insert(row, using)
    relay_on_commit(using)


def new_row(
    model: str, action: str, key: str, data: dict[str, Any], changed: Sequence[str], *, target: str = TOPIC
) -> OutboxEvent:
    now = timezone.now()
    return OutboxEvent(
        model=model,
        action=action,
        key=key,
        data=data,
        changed=list(changed),
        event_id=uuid.uuid4(),
        target=target,
        occurred_at=now,
        next_attempt_at=now,
    )


def _insert(row: OutboxEvent, using: str) -> None:
    """INSERT ... RETURNING id with a statement built once: this runs inside every captured save.

    The ORM's create() spends most of its time compiling the same INSERT again; the values still go
    through each field's own get_db_prep_save, so JSON and UUID columns are stored exactly as the ORM would.
    """
    connection = connections[using]
    if not connection.features.can_return_columns_from_insert:
        row.save(using=using, force_insert=True)
        return
    fields = _insert_fields()
    params = [f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(connection), params)
        row.id = cursor.fetchone()[0]
    row._state.adding, row._state.db = False, using


@functools.cache
def _insert_fields() -> list[models.Field]:
    return [f for f in OutboxEvent._meta.concrete_fields if not f.primary_key]


_insert_sql_by_vendor: dict[str, str] = {}


def _insert_sql(connection: Any) -> str:
    sql = _insert_sql_by_vendor.get(connection.vendor)
    if sql is None:
        quote = connection.ops.quote_name
        columns = ", ".join(quote(f.column) for f in _insert_fields())
        marks = ", ".join(["%s"] * len(_insert_fields()))
        table = quote(OutboxEvent._meta.db_table)
        sql = f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING {quote('id')}"
        _insert_sql_by_vendor[connection.vendor] = sql
    return sql


def relay_on_commit(using: str) -> None:
    """Schedule one relay per transaction (not one per row)."""
    connection = connections[using]
    request = _relay_request(using)
    if connection.in_atomic_block and any(entry[1] is request for entry in connection.run_on_commit):
        return
    transaction.on_commit(request, using=using, robust=True)


# After a relay request the broker refused, saves do not ask it again for this long: each ask waits out
# the broker's connect timeout and retries (seconds against a Redis that does not answer), in the request
# that saved. Their rows stay pending meanwhile, for the next request or the sweep.
BROKER_REST_SECONDS = 5.0
_broker_down_until = 0.0


def _request_relay(using: str = "default") -> None:
    global _broker_down_until
    mode = settings.relay_mode()
    if mode == "celery":
        from celery import current_app

        if time.monotonic() < _broker_down_until:
            log.debug("relay not requested: the broker refused the last request moments ago")
            return
        try:
            current_app.send_task(
                "reactive.relay_outbox", kwargs={"using": using} if using != "default" else None
            )
        except Exception as exc:  # the broker is down (kombu/redis errors of many kinds): the row is safe
            _broker_down_until = time.monotonic() + BROKER_REST_SECONDS
            log.warning(
                "relay not requested (%s: %s); the outbox sweep will send the row, and saves do not ask the "
                "broker again for %.0f s",
                type(exc).__name__,
                exc,
                BROKER_REST_SECONDS,
            )
    elif mode == "inline":
        from reactive.transport import get_transport

        relay_pending(get_transport(), using=using)


_relay_requests: dict[
    str, Callable[[], None]
] = {}  # one callable per alias: relay_on_commit finds it by identity


def _relay_request(using: str) -> Callable[[], None]:
    if using == "default":
        return _request_relay
    return _relay_requests.setdefault(using, functools.partial(_request_relay, using))


def databases() -> list[str]:
    """The aliases outbox rows are written to, which the sweep goes through: each tracked model's listed
    aliases (``track(databases=...)``), or the router's alias for it when it is captured on every alias.

    A model saved to other aliases as well (``save(using=...)``) writes its rows there too; they are
    relayed at their commit, but the sweep retries them only where listed: list every alias the model is
    saved to. Not guessed from the configured databases: a read replica or a second alias of the same
    database holds the outbox table too, and is no place to claim rows.
    """
    from django.db import router

    from reactive import capture

    found: set[str] = set()
    for tracking in capture.tracked_models():
        found.update(tracking.databases or {router.db_for_write(tracking.model)})
    return sorted(found) or ["default"]


def relay_pending(transport: Transport, *, limit: int = 500, using: str = "default") -> RelayResult:
    """Publish due rows (PublishBatch, 10 a call), mark them sent, and back off the ones that failed.

    Rows are claimed with a lease in a short transaction (skip-locked where the database has it), then
    published outside any transaction so that no lock is held over the network. Each batch is marked as
    soon as its call returns, and a run that outlasts half its lease renews it for the rows it still
    owns: a slow SNS does not hand rows already sent, or still to send, to a second relay. A relay that
    dies mid-way leaves its rows to be claimed again when the lease ends: at-least-once, never lost.
    """
    result = RelayResult()
    rows, lease = _claim_batch(limit, using)
    messages = {row.id: _message(row) for row in rows}
    for target, batch in _batches(rows, messages):
        if lease.half_spent():
            lease.renew(using)
        batch = [row for row in batch if row.id in lease.owned]
        if not batch:
            continue  # another relay took them over while this one was held up
        ok, failed = _publish(transport, target, [(row, messages[row.id]) for row in batch])
        now = timezone.now()
        _mark_sent(ok, using, now)
        _mark_failed(failed, using, now)
        lease.owned.difference_update(row.id for row in batch)
        result.sent += len(ok)
        result.failed += len(failed)
        result.errors.update({str(r.id): reason for r, reason in failed})
    _remember_burst(rows, using)
    if result.failed:
        log.warning(
            "relay: %d sent, %d failed (will retry): %s", result.sent, result.failed, _first(result.errors)
        )
    return result


def _batches(
    rows: Sequence[OutboxEvent], messages: dict[int, OutgoingMessage]
) -> list[tuple[str, list[OutboxEvent]]]:
    """The calls to make: per target (the topic, or one client's queue for resync rows), in id order, at
    most ten rows and 256 KiB a call; then each row too big for any call alone, which the transport refuses.
    """
    by_target: dict[str, list[OutboxEvent]] = defaultdict(list)
    for row in rows:
        by_target[row.target].append(row)
    calls: list[tuple[str, list[OutboxEvent]]] = []
    for target, group in by_target.items():
        by_id = {str(row.id): row for row in group}
        batches, too_big = packed([messages[row.id] for row in group])
        calls += [(target, [by_id[m.id] for m in batch]) for batch in batches]
        calls += [(target, [by_id[m.id]]) for m in too_big]
    return calls


@dataclass
class _Lease:
    """The rows one relay run claimed, and until when no other relay may claim them."""

    until: datetime
    seconds: float
    owned: set[int] = field(default_factory=set)

    @classmethod
    def start(cls) -> _Lease:
        seconds = settings.float_setting("REACTIVE_RELAY_LEASE", 60.0)
        return cls(timezone.now() + timedelta(seconds=seconds), seconds)

    def half_spent(self) -> bool:
        return timezone.now() >= self.until - timedelta(seconds=self.seconds / 2)

    def renew(self, using: str) -> None:
        """Extend the lease of the rows this run still owns (their lease is still the one it set)."""
        until = timezone.now() + timedelta(seconds=self.seconds)
        with transaction.atomic(using=using):
            mine = OutboxEvent.objects.using(using).select_for_update()
            mine = mine.filter(id__in=self.owned, sent_at__isnull=True, next_attempt_at=self.until)
            ids = set(mine.values_list("id", flat=True))
            OutboxEvent.objects.using(using).filter(id__in=ids).update(next_attempt_at=until)
        lost = len(self.owned) - len(ids)
        if lost:
            log.warning("relay: the lease of %d rows ran out while publishing; another relay has them", lost)
        self.owned, self.until = ids, until


@dataclass
class _Burst:
    """The last relay of several fresh rows: when it ended and how fast those rows had arrived."""

    at: float  # _clock()
    seconds_per_row: float


# Per database alias, in this process. Under load, the row that wakes the relay after a burst is most
# likely the first of the next one, not a lone change. (With several relay processes, another one may
# take the rows this one waits for: the wait then brings nothing and costs at most the linger.)
_last_burst: dict[str, _Burst] = {}
# The relay's clock and its wait, as module names: tests replace these, not the process-wide time functions.
_clock = time.monotonic
_pause = time.sleep
# How long a burst is kept in mind, in lingers (1 s at the default 50 ms). Producers that wait for their
# changes to land (a bulk job, a request that saves in steps) send the next wave a pipeline round trip
# later, 0.1-0.5 s under load. A lone row that was in fact alone pays one wait, at most the burst's pace
# times the rows missing (the linger at most), and then ends the burst.
BURST_MEMORY_LINGERS = 20


def _claim_batch(limit: int, using: str) -> tuple[list[OutboxEvent], _Lease]:
    """Claim due rows; under load, wait a little so that PublishBatch goes out full.

    Changes arrive faster than the relay publishes when two or more fresh rows are pending but fewer
    than a batch, or when a lone row comes soon after such a burst (within BURST_MEMORY_LINGERS lingers
    of its publishing). The relay then waits as long as the arrival rate says a full batch needs and claims
    again, and again while rows keep coming: REACTIVE_RELAY_LINGER seconds at most in all. A wait that
    brings nothing sends what is there and, after a lone row, ends the burst: the next lone row goes at
    once, as it does on a quiet system. Retried rows (their time of arrival says nothing about the
    current pace) never make the relay wait.
    """
    lease = _Lease.start()
    rows = _claim(limit, using, lease)
    linger = settings.float_setting("REACTIVE_RELAY_LINGER", 0.05)
    batch = min(BATCH_LIMIT, limit)
    if linger <= 0 or not rows or len(rows) >= batch:
        return rows, lease
    seen = _last_burst.get(using)
    if len(rows) > 1:
        pace = _seconds_per_row(rows)
    elif rows[0].attempts == 0 and seen is not None and _clock() - seen.at <= BURST_MEMORY_LINGERS * linger:
        pace = seen.seconds_per_row
    else:
        pace = None
    lone, deadline = len(rows) == 1, _clock() + linger
    while pace is not None and len(rows) < batch:
        left = deadline - _clock()
        if left <= 0:
            break
        _pause(min(left, pace * (batch - len(rows))))
        more = _claim(limit - len(rows), using, lease)
        if not more:
            break  # arrivals stopped: what is here goes now
        rows += more
        pace = _seconds_per_row(rows)  # still coming: wait again for the rest, at the pace seen
    if lone and len(rows) == 1 and _last_burst.get(using) is seen:
        _last_burst.pop(using, None)  # a lone row that brought no company: no burst is going on
    return rows, lease


def _seconds_per_row(rows: Sequence[OutboxEvent]) -> float | None:
    """The arrival pace of the fresh rows (None when fewer than two): a retried row arrived long ago."""
    fresh = [row for row in rows if row.attempts == 0]
    if len(fresh) < 2:
        return None
    # Rows are in id order; their clocks (several web processes, several hosts) need not agree.
    return abs((fresh[-1].occurred_at - fresh[0].occurred_at).total_seconds()) / (len(fresh) - 1)


def _remember_burst(rows: Sequence[OutboxEvent], using: str) -> None:
    """Called once the rows are published: the next lone row is measured from now."""
    pace = _seconds_per_row(rows)
    if pace is not None:
        _last_burst[using] = _Burst(_clock(), pace)


def _claim(limit: int, using: str, lease: _Lease) -> list[OutboxEvent]:
    """Due rows, in id order, leased until ``lease.until``: no other relay claims them meanwhile."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        rows = _claim_in_one_statement(connection, limit, using, lease)
    else:
        rows = _claim_in_a_transaction(connection, limit, using, lease)
    lease.owned.update(row.id for row in rows)
    return rows


def _claim_in_one_statement(connection: Any, limit: int, using: str, lease: _Lease) -> list[OutboxEvent]:
    # One round trip, where BEGIN, SELECT ... FOR UPDATE, UPDATE and COMMIT take four: on every commit's
    # relay, and on every claim of a linger. The CTE locks (skipping rows another relay holds) and is
    # evaluated once; the UPDATE commits on its own unless a caller's transaction is open.
    params = (timezone.now(), limit, lease.until)
    rows = list(OutboxEvent.objects.raw(_claim_sql(connection), params, using=using))
    return sorted(rows, key=lambda row: row.id)  # RETURNING keeps no order


def _claim_in_a_transaction(connection: Any, limit: int, using: str, lease: _Lease) -> list[OutboxEvent]:
    skip_locked = connection.features.has_select_for_update_skip_locked
    with transaction.atomic(using=using):
        rows = list(
            OutboxEvent.objects.using(using)
            .select_for_update(skip_locked=skip_locked)
            .filter(sent_at__isnull=True, next_attempt_at__lte=timezone.now())
            .order_by("id")[:limit]
        )
        if rows:
            ids = [r.id for r in rows]
            OutboxEvent.objects.using(using).filter(id__in=ids).update(next_attempt_at=lease.until)
    return rows


_claim_sql_by_vendor: dict[str, str] = {}


def _claim_sql(connection: Any) -> str:
    sql = _claim_sql_by_vendor.get(connection.vendor)
    if sql is None:
        sql = _claim_sql_by_vendor[connection.vendor] = _build_claim_sql(connection)
    return sql


def _build_claim_sql(connection: Any) -> str:
    quote = connection.ops.quote_name
    table = quote(OutboxEvent._meta.db_table)
    pk, sent, due = (
        quote(OutboxEvent._meta.get_field(name).column) for name in ("id", "sent_at", "next_attempt_at")
    )
    return (
        f"WITH due AS (SELECT {pk} FROM {table} WHERE {sent} IS NULL AND {due} <= %s"
        f" ORDER BY {pk} LIMIT %s FOR UPDATE SKIP LOCKED)"
        f" UPDATE {table} SET {due} = %s FROM due WHERE {table}.{pk} = due.{pk} RETURNING {table}.*"
    )


Outgoing = list[tuple[OutboxEvent, OutgoingMessage]]  # rows with their messages, in id order


def _publish(
    transport: Transport, target: str, batch: Outgoing
) -> tuple[list[OutboxEvent], list[tuple[OutboxEvent, str]]]:
    """One PublishBatch (or SendMessageBatch for a resync row): which rows went out, which failed and why.

    When AWS refuses a call of several rows as such (a 4xx, not throttling), the rows go again one by
    one, so that one row it cannot take does not hold back the others for ever.
    """
    messages = [message for _, message in batch]
    try:
        if target == TOPIC:
            outcome = transport.publish(messages)
        else:
            outcome = transport.send(settings.names().queue(target), messages)
    except ReactiveError as exc:
        if len(batch) > 1 and type(exc) is TransportError and exc.refused_request:
            return _publish_one_by_one(transport, target, batch, exc)
        return [], [(row, str(exc)) for row, _ in batch]
    ok_ids = set(outcome.succeeded)
    ok = [row for row, _ in batch if str(row.id) in ok_ids]
    failed = [
        (r, outcome.failed.get(str(r.id), "not acknowledged")) for r, _ in batch if str(r.id) not in ok_ids
    ]
    return ok, failed


def _publish_one_by_one(
    transport: Transport, target: str, batch: Outgoing, refusal: TransportError
) -> tuple[list[OutboxEvent], list[tuple[OutboxEvent, str]]]:
    """Each row alone; when the first is refused just as the whole call was, AWS refuses the topic or the
    queue (a policy, a key), not a row: the others are not tried."""
    first_ok, first_failed = _publish(transport, target, batch[:1])
    if first_failed and refusal.code and refusal.code in first_failed[0][1]:
        return [], first_failed + [(row, str(refusal)) for row, _ in batch[1:]]
    ok, failed = list(first_ok), list(first_failed)
    for entry in batch[1:]:
        one_ok, one_failed = _publish(transport, target, [entry])
        ok += one_ok
        failed += one_failed
    return ok, failed


def _message(row: OutboxEvent) -> OutgoingMessage:
    event = row.to_event()
    return OutgoingMessage(
        id=str(row.id),
        body=encode(event),
        attributes=event.message_attributes(),
        group_id=event.key,
        dedup_id=event.dedup_id,
    )


def _mark_sent(rows: Iterable[OutboxEvent], using: str, now: datetime) -> None:
    ids = [r.id for r in rows]
    if ids:
        OutboxEvent.objects.using(using).filter(id__in=ids).update(sent_at=now, last_error="")


def _mark_failed(failed: list[tuple[OutboxEvent, str]], using: str, now: datetime) -> None:
    for row, reason in failed:
        attempts = row.attempts + 1
        OutboxEvent.objects.using(using).filter(id=row.id).update(
            attempts=attempts, next_attempt_at=now + backoff(attempts), last_error=reason[:2000]
        )


def backoff(attempts: int) -> timedelta:
    """Exponential, from REACTIVE_RELAY_BACKOFF seconds (default 1) up to REACTIVE_RELAY_BACKOFF_MAX (300)."""
    base = settings.float_setting("REACTIVE_RELAY_BACKOFF", 1.0)
    cap = settings.float_setting("REACTIVE_RELAY_BACKOFF_MAX", 300.0)
    doublings = min(max(0, attempts - 1), 64)  # a row refused for days must not overflow the float
    return timedelta(seconds=min(cap, base * 2.0**doublings))


def prune_sent(*, older_than: timedelta | None = None, using: str = "default") -> int:
    """Delete rows sent before the retention period (REACTIVE_OUTBOX_RETENTION_HOURS, default 168)."""
    retention = (
        older_than
        if older_than is not None
        else timedelta(hours=settings.float_setting("REACTIVE_OUTBOX_RETENTION_HOURS", 168))
    )
    deleted, _ = OutboxEvent.objects.using(using).filter(sent_at__lt=timezone.now() - retention).delete()
    return deleted


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest: datetime | None
    failing: int = 0  # pending rows whose publishing failed at least once
    last_error: str = ""  # why the oldest of those failed last
    oldest_failing: datetime | None = None  # when that row was written

    @property
    def oldest_age_seconds(self) -> float | None:
        return (timezone.now() - self.oldest).total_seconds() if self.oldest else None

    @classmethod
    def combined(cls, parts: Sequence[Backlog]) -> Backlog:
        """Several databases' backlogs as one: counts summed, the oldest row's age, the oldest failing
        row's error."""
        failing = [p for p in parts if p.oldest_failing is not None]
        first_failing = min(failing, key=lambda p: p.oldest_failing or timezone.now(), default=None)
        return cls(
            pending=sum(p.pending for p in parts),
            oldest=min((p.oldest for p in parts if p.oldest is not None), default=None),
            failing=sum(p.failing for p in parts),
            last_error=first_failing.last_error if first_failing else "",
            oldest_failing=first_failing.oldest_failing if first_failing else None,
        )


def backlog(using: str | None = None) -> Backlog:
    """The pending rows of one database, or (None) of every database the sweep goes through together."""
    return Backlog.combined([_backlog_of(alias) for alias in ([using] if using else databases())])


def _backlog_of(using: str) -> Backlog:
    pending = OutboxEvent.objects.using(using).filter(sent_at__isnull=True)
    stats = pending.aggregate(oldest=Min("occurred_at"))
    failing = pending.filter(attempts__gt=0)
    first = failing.order_by("id").values_list("last_error", "occurred_at").first()
    error, written = first if first else ("", None)
    return Backlog(pending.count(), stats["oldest"], failing.count(), error or "", written)


def _first(errors: dict[str, str]) -> str:
    return next(iter(errors.values()), "")
