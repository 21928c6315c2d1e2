"""The receive loop of one client: long-poll a batch, apply it in one transaction, notify, ack after commit.

A message that cannot be decoded or applied is not deleted: it becomes visible again and, after the
queue's maxReceiveCount, SQS moves it to the DLQ. SIGTERM/SIGINT finish the batch in hand, ack it,
and return; a signal during the long poll abandons the poll (unacked messages simply reappear).

Acks of committed messages may wait a little (REACTIVE_ACK_LINGER seconds, at most a quarter of the
queue's visibility timeout) so that one DeleteMessageBatch carries ten of them: a quiet client then
pays one delete per ten changes instead of one per change, and the delete is off the path from one
change to the next. They are sent when ten are pending, when the linger is up, and when the listener
stops. A listener killed before that loses nothing: the messages come back and apply as stale. On a
FIFO queue acks never wait: a message in flight holds back the next change of the same user.

Browsers hear of a change from the channel layer, after the commit. When it is down (Redis out, for this
process at least), the profiles it did not take are kept, the latest per user, and sent again before every
poll until it takes them (Unnotified), so that open pages show a change as soon as Redis is back. What is
still kept when the listener stops, the sites' own check of their open pages against the replica
(client_site/web/freshness.py) sends within seconds.

A listener that is running but stuck (a hung call, a deadlock) is found by its heartbeat
(REACTIVE_HEARTBEAT_FILE, reactive/heartbeat.py): it is touched before every call that may wait on AWS
(the long poll, a delete) and all along an outage's backoff, so only a loop that stopped going round
lets it go stale.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from django.db import DatabaseError, InterfaceError, connections, transaction

from reactive import groups, settings
from reactive.errors import (
    MessageError,
    ReactiveError,
    ResourceNotFound,
    ServiceUnavailable,
    is_missing_schema,
    retry_delay,
)
from reactive.events import USER_MODEL, Event, decode
from reactive.heartbeat import Heartbeat
from reactive.replica import Outcome, ReplicaState, apply_batch, apply_held_renames
from reactive.transport.base import BATCH_LIMIT, ReceivedMessage, Transport

log = logging.getLogger("reactive.listener")
Notifier = Callable[[Iterable[tuple[str, Mapping[str, Any]]]], Any]
ONCE_WAIT_SECONDS = 1  # --once drains what is visible now; it never waits a full long poll
ACK_LINGER_SECONDS = 5.0
# A rename onto a name a local account holds waits for that account to go (replica.apply_held_renames): one
# indexed query this often, in the loop, between polls.
HELD_RENAMES_CHECK_SECONDS = 60.0
# Users whose latest profile waits for the channel layer, at most: past it the oldest are given up (one
# warning), and those pages catch up when they reconnect. Some 10,000 small dicts: a few megabytes.
UNNOTIFIED_LIMIT = 10_000


@dataclass
class Totals:
    batches: int = 0
    received: int = 0
    applied: int = 0
    stale: int = 0
    failed: int = 0
    acked: int = 0

    def add(self, other: Totals) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


Profiles = dict[str, Mapping[str, Any]]


class Unnotified:
    """Profiles the channel layer has not taken yet: the latest per user, oldest change first.

    ``current`` keeps, of the profiles that waited, those still the replica's latest: another listener of
    the client may have applied (and announced) a newer version meanwhile, and an outdated end (disabled,
    since enabled again) would close that user's sockets for good.
    """

    def __init__(
        self, notify: Notifier, current: Callable[[Profiles], Profiles], limit: int = UNNOTIFIED_LIMIT
    ) -> None:
        self.notify = notify
        self.current = current
        self.limit = limit
        self.profiles: Profiles = {}
        self.held = False  # the last send left some: said once, and once more when they go

    def send(self, changes: Iterable[tuple[str, Mapping[str, Any]]] = ()) -> None:
        """Send what still waits, then these changes (each one: a live page shows every step); keep, per
        user, the latest of what the layer did not take."""
        changes = list(changes)
        newer = {local_pk for local_pk, _ in changes}  # applied after what waits: it supersedes it
        held = {pk: p for pk, p in self.profiles.items() if pk not in newer}
        waiting = [*(self.current(held) if held else {}).items(), *changes]
        if not waiting:
            return
        sent = self.notify(waiting)
        taken = sent if isinstance(sent, int) else len(waiting)  # a notifier that says nothing took all
        self.profiles = {}
        for local_pk, profile in waiting[taken:]:
            self.profiles.pop(local_pk, None)  # applied later, so newer: it replaces an older one
            self.profiles[local_pk] = profile
        self._give_up_past_the_limit()
        if self.profiles and not self.held:
            log.warning(
                "%d changes wait for the channel layer: sent again before every poll", len(self.profiles)
            )
        elif self.held and not self.profiles:
            log.info("the channel layer took the changes that waited for it")
        self.held = bool(self.profiles)

    def _give_up_past_the_limit(self) -> None:
        over = len(self.profiles) - self.limit
        if over > 0:
            for local_pk in list(self.profiles)[:over]:
                del self.profiles[local_pk]
            log.warning(
                "gave up pushing %d changes to browsers (the channel layer is down): their pages show "
                "them when they reconnect",
                over,
            )


class _PollInterrupted(BaseException):
    """Raised by the signal handler inside a long poll. A BaseException (like KeyboardInterrupt): botocore
    retries a request that failed with any Exception, which would start a new 20 s poll after SIGTERM."""


class Listener:
    def __init__(
        self,
        client: str,
        transport: Transport,
        *,
        batch: int = 10,
        wait: float = 20,
        using: str = "default",
        notify: Notifier = groups.notify_profiles,
        ack_linger: float | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.client = settings.validate_client(client)
        self.queue = settings.names().queue(client)
        self.transport = transport
        self.batch = max(1, min(10, batch))
        self.wait = wait
        self.using = using
        self.unnotified = Unnotified(notify, self._still_current)
        self._stop = threading.Event()
        self._polling = False
        if ack_linger is None:
            ack_linger = settings.float_setting("REACTIVE_ACK_LINGER", ACK_LINGER_SECONDS)
        self.ack_linger = ack_linger
        self._linger = 0.0  # acks wait only inside run(), which knows the queue's visibility timeout
        self._unacked: list[str] = []
        self._unacked_since = 0.0
        self.heartbeat = heartbeat if heartbeat is not None else Heartbeat.configured(self.client)
        self._held_checked_at = -HELD_RENAMES_CHECK_SECONDS  # the first round looks at once

    # -- lifecycle ------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            log.info("%s received: finishing the batch in hand", signal.Signals(signum).name)
            self._stop.set()
            if self._polling:
                raise _PollInterrupted

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def run(self, *, once: bool = False) -> Totals:
        """Poll until stopped (or, with ``once``, until the first empty receive)."""
        self.heartbeat.start()
        # Fails fast, with a clear error, when the queue is missing or the database was never migrated.
        visibility = self._visibility_timeout(once)
        if visibility is None:  # stopped while AWS was still out of reach: nothing was received
            return Totals()
        self._require_schema()
        # No linger on a FIFO queue: a message in flight holds back the next of its group (the same user),
        # so an ack that waits would make a user's every next change wait with it.
        fifo = self.queue.endswith(".fifo")
        self._linger = 0.0 if fifo else min(self.ack_linger, visibility / 4)
        totals = Totals()
        failures = 0
        try:
            while not self.stopping:
                wait = min(self.wait, ONCE_WAIT_SECONDS) if once else self.wait
                try:
                    self.unnotified.send()  # what the channel layer did not take before
                    self._apply_held_renames_if_due()
                    totals.acked += self._ack_if_due()
                    report = self.poll(wait=self._wait_with_acks_pending(wait))
                except _PollInterrupted:
                    break
                except ResourceNotFound:
                    raise
                except (ServiceUnavailable, ReactiveError, DatabaseError, InterfaceError) as exc:
                    if isinstance(exc, DatabaseError | InterfaceError):
                        # Outside a transaction Django never drops a broken connection by itself (a
                        # request's end does that): every later query would fail on it for good.
                        connections[self.using].close_if_unusable_or_obsolete()
                    if once:  # a one-shot drain that cannot apply what it holds fails; it does not wait
                        raise
                    failures += 1
                    delay = retry_delay(failures)
                    log.error("listener %s: %s; retrying in %.1f s", self.client, exc, delay)
                    self.heartbeat.pause(self._stop, delay)  # an outage is no reason to be restarted
                    continue
                failures = 0
                totals.add(report)
                if once and report.received == 0:
                    break
        finally:
            totals.acked += self._ack_on_the_way_out()
            if self.unnotified.profiles:
                log.warning(
                    "listener %s: %d changes never reached browsers (the channel layer is down): open "
                    "pages catch up at their site's next check against the replica (every 15 s or so)",
                    self.client,
                    len(self.unnotified.profiles),
                )
        return totals

    def _visibility_timeout(self, once: bool) -> float | None:
        """The queue's visibility timeout. AWS out of reach at start-up is waited out with the loop's
        backoff, as it is later on: exiting made an orchestrator restart the listener with its own,
        longer backoff (Kubernetes' reaches 5 minutes). A one-shot drain fails at once; a missing
        queue, or credentials, fail at once too. None: stopped meanwhile."""
        failures = 0
        while True:
            try:
                return self.transport.visibility_timeout(self.queue)
            except ServiceUnavailable as exc:
                if once:
                    raise
                failures += 1
                delay = retry_delay(failures)
                log.error("listener %s: %s; retrying in %.1f s", self.client, exc, delay)
                if self.heartbeat.pause(self._stop, delay):
                    return None

    def _require_schema(self) -> None:
        """A database without the replica's tables (or a column a later release added): no retry mends
        that, a migration does, so stop here.

        Any other database error (an outage) is left to the loop, which retries it with backoff.
        """
        from django.contrib.auth import get_user_model

        try:
            list(ReplicaState.objects.using(self.using)[:1])  # every column: a later migration's too
            get_user_model()._default_manager.using(self.using).exists()
        except DatabaseError as exc:
            if is_missing_schema(exc):
                raise

    # -- one batch ------------------------------------------------------------------------------
    def poll(self, *, wait: float | None = None) -> Totals:
        self._polling = True
        try:
            if self.stopping:
                raise _PollInterrupted
            self.heartbeat.beat()  # at least once a long poll
            messages = self.transport.receive(
                self.queue,
                max_messages=self.batch,
                wait_seconds=self.wait if wait is None else wait,
                lean=True,
            )
        finally:
            self._polling = False
        return self.process(messages) if messages else Totals()

    def process(self, messages: Sequence[ReceivedMessage]) -> Totals:
        report = Totals(batches=1, received=len(messages))
        decoded: list[tuple[ReceivedMessage, Event]] = []
        for message in messages:
            try:
                decoded.append((message, decode(message.body, sent_timestamp=message.sent_timestamp)))
            except MessageError as exc:
                report.failed += 1
                _log_bad(message, str(exc))
        decoded.sort(key=lambda pair: pair[1].version)  # older first, so that fewer events are stale
        applied = self._apply([event for _, event in decoded])
        outcomes = [(message, outcome) for (message, _), outcome in zip(decoded, applied, strict=True)]
        done: list[str] = []
        for message, outcome in outcomes:
            if outcome.status == "failed":
                report.failed += 1
                _log_bad(message, outcome.error)
                continue
            done.append(message.receipt)
            if outcome.status == "applied":
                report.applied += 1
            else:
                report.stale += 1
                log.debug(
                    "skipped %s %s v%s: not newer",
                    outcome.event.action,
                    outcome.event.key,
                    outcome.event.version,
                )
        # Notify as soon as the transaction has committed, before the ack: browsers do not wait for the
        # DeleteMessageBatch round trip (a redelivery after a crash here is stale and notifies nobody).
        self._notify(o for _, o in outcomes)
        report.acked = self._ack(done)
        return report

    def _apply(self, events: list[Event]) -> list[Outcome]:
        """The batch in one transaction. Should one of its events break it in a way no savepoint contains
        (a bug, not the database: that error is raised for the loop to retry), the events are applied one
        transaction each, so that only the culprit fails and the rest still commit and are acked."""
        try:
            return self._apply_in_one_transaction(events)
        except (DatabaseError, InterfaceError):  # the database, not the events: the loop retries
            raise
        except Exception as exc:
            if len(events) == 1:
                return [Outcome(events[0], "failed", f"{type(exc).__name__}: {exc}")]
            log.exception(
                "listener %s: a batch failed as a whole; applying its events one by one", self.client
            )
            return [outcome for event in events for outcome in self._apply([event])]

    def _apply_in_one_transaction(self, events: list[Event]) -> list[Outcome]:
        with transaction.atomic(using=self.using):
            return apply_batch(events, self.using)

    # -- acks -----------------------------------------------------------------------------------
    def _ack(self, receipts: Sequence[str]) -> int:
        """Delete committed messages now, or keep them for a fuller DeleteMessageBatch (see the module doc)."""
        if not receipts:
            return 0
        if not self._unacked:
            self._unacked_since = time.monotonic()
        self._unacked += receipts
        if self._linger < 1:  # too short to wait for across a long poll (whole seconds): ack now
            return self._ack_all()
        full = len(self._unacked) // BATCH_LIMIT * BATCH_LIMIT
        return self._delete(full) if full else 0

    def _linger_left(self) -> float:
        return self._unacked_since + self._linger - time.monotonic()

    def _ack_if_due(self) -> int:
        # A long poll waits whole seconds: acks whose linger ends within the next one go now.
        return self._ack_all() if self._unacked and self._linger_left() < 1 else 0

    def _wait_with_acks_pending(self, wait: float) -> float:
        return min(wait, int(self._linger_left())) if self._unacked else wait

    def _ack_on_the_way_out(self) -> int:
        try:
            return self._ack_all()
        except ReactiveError as exc:  # committed already: the messages come back and apply as stale
            log.warning("listener %s: could not delete processed messages on stop: %s", self.client, exc)
            return 0

    def _ack_all(self) -> int:
        return self._delete(len(self._unacked))

    def _delete(self, count: int) -> int:
        receipts, self._unacked = self._unacked[:count], self._unacked[count:]
        if not receipts:
            return 0
        self.heartbeat.beat()  # a delete may wait on AWS as long as a poll
        result = self.transport.delete(self.queue, receipts)
        for reason in result.failed.values():
            log.warning(
                "could not delete a processed message (it will be redelivered, harmlessly): %s", reason
            )
        return len(result.succeeded)

    def _apply_held_renames_if_due(self) -> None:
        """Every HELD_RENAMES_CHECK_SECONDS: names a local account held, free now, go to their replicas."""
        now = time.monotonic()
        if now - self._held_checked_at < HELD_RENAMES_CHECK_SECONDS:
            return
        self._held_checked_at = now
        self.unnotified.send(apply_held_renames(self.using))

    def _still_current(self, profiles: Profiles) -> Profiles:
        """Those of ``profiles`` (by local pk) whose user's replica has not moved past their version since:
        whoever moved it announced the newer one."""
        live = ReplicaState.objects.using(self.using).filter(
            model=USER_MODEL, local_pk__in=list(profiles), deleted=False
        )
        versions = dict(live.values_list("local_pk", "version"))
        return {
            pk: profile
            for pk, profile in profiles.items()
            if versions.get(pk, profile.get("version")) == profile.get("version")
        }

    def _notify(self, outcomes: Iterable[Outcome]) -> None:
        changes = [
            (o.local_pk, o.profile) for o in outcomes if o.status == "applied" and o.local_pk and o.profile
        ]
        self.unnotified.send(changes)


def _log_bad(message: ReceivedMessage, reason: str) -> None:
    log.warning(
        "bad message %s (receive %d, left for the DLQ): %s",
        message.message_id,
        message.receive_count,
        reason[:300],
    )


def serve(client: str, *, once: bool = False, batch: int = 10, wait: float = 20) -> Totals:
    """Run one client's listener in this process (Django already set up), with signal handling."""
    from reactive.transport import get_transport

    listener = Listener(client, get_transport(), batch=batch, wait=wait)
    listener.install_signal_handlers()
    log.info("listener %s: polling %s", client, listener.queue)
    totals = listener.run(once=once)
    log.info(
        "listener %s: stopped after %d messages (%d applied, %d stale, %d failed)",
        client,
        totals.received,
        totals.applied,
        totals.stale,
        totals.failed,
    )
    return totals
