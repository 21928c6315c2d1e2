"""What an operator (or a monitor) wants to know at a glance: queue depths, dead letters, subscriptions,
and the master's outbox backlog. Collecting is separate from rendering (cli/status.py)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reactive import settings
from reactive.errors import ResourceNotFound
from reactive.transport.base import QueueDepth
from reactive.transport.sqs import SqsTransport, aws_errors

DEFAULT_MAX_AGE = 300.0  # seconds: an outbox row pending longer than this means the relay is stuck


@dataclass(frozen=True)
class Subscription:
    present: bool
    raw_delivery: bool = False
    arn: str | None = None
    filter_policy: Any = None
    dead_letter_target: str | None = None  # the queue ARN SNS sends what it cannot deliver to


@dataclass(frozen=True)
class ClientStatus:
    client: str
    queue: str
    dlq: str
    queue_depth: QueueDepth | None  # None: the queue does not exist
    dlq_depth: QueueDepth | None
    subscription: Subscription

    def problems(self) -> list[str]:
        found = []
        if self.queue_depth is None:
            found.append(f"{self.client}: queue {self.queue} is missing (run `reactive provision`)")
        if self.dlq_depth is None:
            found.append(f"{self.client}: DLQ {self.dlq} is missing (run `reactive provision`)")
        elif self.dead_letters:
            found.append(f"{self.client}: {self.dead_letters} message(s) in the DLQ (`reactive dlq list`)")
        if not self.subscription.present:
            found.append(f"{self.client}: {self.queue} is not subscribed to the topic")
        elif not self.subscription.raw_delivery:
            found.append(f"{self.client}: the subscription does not use raw message delivery")
        if self.subscription.present and not (self.subscription.dead_letter_target or "").endswith(
            f":{self.dlq}"
        ):
            found.append(
                f"{self.client}: what SNS cannot deliver is not kept in {self.dlq} (run `reactive provision`)"
            )
        return found

    @property
    def dead_letters(self) -> int:
        d = self.dlq_depth
        return 0 if d is None else d.visible + d.in_flight + d.delayed


@dataclass(frozen=True)
class OutboxStatus:
    available: bool
    pending: int | None = None
    oldest_age_seconds: float | None = None
    detail: str = ""  # why it is not available
    failing: int | None = None  # pending rows whose publishing failed at least once
    last_error: str = ""  # why the oldest of them failed last
    # A master database was named for this process (DATABASE_URL): one it cannot read is an outage to
    # report, not a host that only sees the AWS side.
    configured: bool = False
    # With several databases, those that could not be read while others could (their backlog is unknown,
    # the figures above are the others'): a problem whatever ``configured`` says.
    unreadable: tuple[str, ...] = ()

    def problems(self, max_age: float) -> list[str]:
        if not self.available:
            return [f"master: {self.detail}"] if self.configured else []
        found = [f"master: {why}" for why in self.unreadable]
        age = self.oldest_age_seconds
        if age is not None and age > max_age:
            why = f"; {self.failing} failing, last error: {self.last_error}" if self.failing else ""
            found.append(
                f"master: the oldest pending outbox row is {age:.0f} s old (more than {max_age:.0f} s){why}"
            )
        return found


@dataclass
class Report:
    topic: str
    clients: list[ClientStatus]
    outbox: OutboxStatus
    max_age: float = DEFAULT_MAX_AGE
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = [p for c in self.clients for p in c.problems()]
        return found + self.outbox.problems(self.max_age)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = self.problems()
        data["ok"] = not data["problems"]
        return data


def aws_status(transport: SqsTransport, clients: list[str]) -> list[ClientStatus]:
    """Depths of each client's queue and DLQ, and its subscription to the topic."""
    names = settings.names()
    subscriptions = _subscriptions(transport)
    found = []
    for client in clients:
        settings.validate_client(client)
        queue, dlq = names.queue(client), names.dlq(client)
        arn = transport.queue_arn(queue)
        found.append(
            ClientStatus(
                client=client,
                queue=queue,
                dlq=dlq,
                queue_depth=_depth(transport, queue),
                dlq_depth=_depth(transport, dlq),
                subscription=_subscription(transport, subscriptions.get(arn)),
            )
        )
    return found


def _depth(transport: SqsTransport, queue: str) -> QueueDepth | None:
    try:
        return transport.depth(queue)
    except ResourceNotFound:
        return None


def _subscriptions(transport: SqsTransport) -> dict[str, str]:
    """Queue ARN -> subscription ARN, for the SQS subscriptions of the topic ({} when there is no topic)."""
    found: dict[str, str] = {}
    try:
        with aws_errors(f"list the subscriptions of topic {transport.topic_name}"):
            paginator = transport.sns.get_paginator("list_subscriptions_by_topic")
            for page in paginator.paginate(TopicArn=transport.topic_arn):
                for sub in page.get("Subscriptions", []):
                    if sub.get("Protocol") == "sqs" and str(sub.get("SubscriptionArn", "")).startswith(
                        "arn:"
                    ):
                        found[str(sub["Endpoint"])] = str(sub["SubscriptionArn"])
    except ResourceNotFound:
        return {}
    return found


def _subscription(transport: SqsTransport, arn: str | None) -> Subscription:
    if arn is None:
        return Subscription(present=False)
    with aws_errors(f"read subscription {arn}"):
        attrs = transport.sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
    policy = attrs.get("FilterPolicy")
    return Subscription(
        present=True,
        raw_delivery=str(attrs.get("RawMessageDelivery", "false")).lower() == "true",
        arn=arn,
        filter_policy=json.loads(policy) if policy else None,
        dead_letter_target=_dead_letter_target(attrs.get("RedrivePolicy")),
    )


def _dead_letter_target(redrive_policy: str | None) -> str | None:
    try:
        return str(json.loads(redrive_policy or "{}").get("deadLetterTargetArn") or "") or None
    except (ValueError, AttributeError):  # not JSON, or not an object: no usable target
        return None


def outbox_status(using: str | None = None, *, configured: bool = False) -> OutboxStatus:
    """The master's outbox backlog (Django configured with the master's settings), or why it is unknown:
    of one database, or (None) of every database outbox rows are written to (outbox.databases()).

    ``configured``: the operator named the master's database for this process, so failing to read it
    is a problem (see OutboxStatus.problems), not just a host without access.
    """
    from django.db import DatabaseError, connections

    from reactive.outbox import Backlog, backlog, databases

    aliases = [using] if using else databases()
    parts, unreadable = [], []
    for alias in aliases:
        where = f" (database {alias!r})" if len(aliases) > 1 else ""
        missing = missing_sqlite_file(connections[alias].settings_dict)
        try:
            if missing:  # never create an empty database file just to look at it
                fix = " (set DATABASE_URL)" if alias == "default" else ""
                raise LookupError(f"no master database at {missing}{where}{fix}")
            parts.append(backlog(alias))
        except (LookupError, DatabaseError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            unreadable.append(reason if missing else f"cannot read the master's outbox{where}: {reason}")
    if not parts:
        return OutboxStatus(False, detail="; ".join(unreadable), configured=configured)
    found = Backlog.combined(parts)
    return OutboxStatus(
        True,
        pending=found.pending,
        oldest_age_seconds=found.oldest_age_seconds,
        failing=found.failing,
        last_error=found.last_error,
        configured=configured,
        unreadable=tuple(unreadable),
    )


def collect(
    clients: list[str],
    outbox: OutboxStatus,
    *,
    transport: SqsTransport | None = None,
    max_age: float = DEFAULT_MAX_AGE,
) -> Report:
    transport = transport or SqsTransport.from_settings()
    return Report(
        topic=transport.topic_name, clients=aws_status(transport, clients), outbox=outbox, max_age=max_age
    )


def missing_sqlite_file(config: dict[str, Any]) -> str | None:
    """The path of a configured SQLite database file that does not exist (None otherwise)."""
    name = str(config.get("NAME", ""))
    in_memory = name == ":memory:" or name.startswith("file:")
    if str(config.get("ENGINE", "")).endswith("sqlite3") and not in_memory and not Path(name).exists():
        return name
    return None
