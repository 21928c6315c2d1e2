"""Idempotent creation of the topic, one queue + DLQ per client, queue policies and raw subscriptions.

``plan`` only reads; ``apply`` creates or updates what differs. Each step reports what it found and did,
so that a second run says "ok" for everything and changes nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

from reactive import settings
from reactive.errors import CredentialsError, ReactiveError, ResourceNotFound, TransportError
from reactive.events import USER_MODEL
from reactive.transport.sqs import SqsTransport, aws_errors, make_client

Action = Literal["ok", "create", "update"]
OWN_SID = "topic-sends"  # reactive's statement in a queue policy; every other statement is the operator's
DLQ_RETENTION = str(14 * 24 * 3600)  # the SQS maximum: dead letters wait for an operator
QUEUE_VISIBILITY = "30"
# AWS may refuse a call naming a queue made a moment ago ("you must wait at least one second after the
# queue is created"; a RedrivePolicy checks that its target exists): such calls are tried again a while.
SETTLE_SECONDS = 10.0
SETTLE_POLL_SECONDS = 0.5
_pause = time.sleep  # tests replace this, not the process-wide time.sleep
log = logging.getLogger("reactive.provision")
T = TypeVar("T")


class PolicyError(ReactiveError):
    """A queue's existing Policy that provisioning cannot merge its statement into without losing others."""


@dataclass
class Step:
    kind: str  # topic, dlq, queue, policy, subscription
    name: str
    action: Action
    detail: str = ""
    arn: str = ""


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    applied: bool = False

    @property
    def changes(self) -> int:
        return sum(1 for s in self.steps if s.action != "ok")

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "changes": self.changes, "steps": [asdict(s) for s in self.steps]}


@dataclass(frozen=True)
class Options:
    clients: Sequence[str]
    fifo: bool = False
    max_receives: int = 5
    filter_models: Sequence[str] = (USER_MODEL,)


class Provisioner:
    def __init__(self, options: Options, sns: Any = None, sqs: Any = None) -> None:
        if options.max_receives < 1 or options.max_receives > 1000:
            raise ValueError("--max-receives must be between 1 and 1000")
        self.options = options
        self.names = settings.names(options.fifo)
        self.transport = SqsTransport(self.names.topic, sns or make_client("sns"), sqs or make_client("sqs"))
        self.sns = self.transport.sns
        self.sqs = self.transport.sqs
        self.created = False  # whether this run made a resource: AWS takes a moment to know it everywhere

    def run(self, *, dry_run: bool = False) -> Plan:
        plan = Plan(applied=not dry_run)
        for client in self.options.clients:  # every name checked before anything is created
            settings.validate_client(client)
            self.names.dlq(client)
        existing = self._existing_queues()  # a policy it cannot merge into stops the run before any write
        topic_arn = self._topic(plan, dry_run)
        for client in self.options.clients:
            dlq_name, queue_name = self.names.dlq(client), self.names.queue(client)
            dlq_attrs = self._dlq_attributes(self.transport.queue_arn(dlq_name), topic_arn)
            dlq_arn = self._queue(plan, "dlq", dlq_name, dlq_attrs, existing[dlq_name], dry_run)
            queue_attrs = self._queue_attributes(dlq_arn, topic_arn, self.transport.queue_arn(queue_name))
            queue_arn = self._queue(plan, "queue", queue_name, queue_attrs, existing[queue_name], dry_run)
            self._subscription(plan, topic_arn, queue_arn, dlq_arn, client, dry_run)
        return plan

    def _settled(self, what: str, call: Callable[[], T]) -> T:
        """Make a call; once this run has created something, a refusal is tried again for a while."""
        deadline = time.monotonic() + (SETTLE_SECONDS if self.created else 0.0)
        while True:
            try:
                with aws_errors(what):
                    return call()
            except CredentialsError:
                raise
            except TransportError as exc:
                refused = exc.refused_request or isinstance(exc, ResourceNotFound)
                if not refused or time.monotonic() >= deadline:
                    raise
                log.info("provision: AWS refused to %s (%s); trying again while it settles", what, exc)
                _pause(SETTLE_POLL_SECONDS)

    # -- topic ----------------------------------------------------------------------------------
    def _topic(self, plan: Plan, dry_run: bool) -> str:
        arn = self.transport.topic_arn
        exists = self._topic_exists(arn)
        if exists:
            plan.steps.append(Step("topic", self.names.topic, "ok", "exists", arn))
            return arn
        plan.steps.append(
            Step("topic", self.names.topic, "create", "FIFO topic" if self.options.fifo else "", arn)
        )
        if not dry_run:
            attrs = {"FifoTopic": "true", "ContentBasedDeduplication": "false"} if self.options.fifo else {}
            with aws_errors(f"create topic {self.names.topic}"):
                arn = self.sns.create_topic(Name=self.names.topic, Attributes=attrs)["TopicArn"]
            self.created = True
        return arn

    def _topic_exists(self, arn: str) -> bool:
        try:
            with aws_errors(f"read topic {self.names.topic}"):
                self.sns.get_topic_attributes(TopicArn=arn)
            return True
        except ResourceNotFound:
            return False

    # -- queues ---------------------------------------------------------------------------------
    def _dlq_attributes(self, dlq_arn: str, topic_arn: str) -> dict[str, str]:
        attrs = {
            "MessageRetentionPeriod": DLQ_RETENTION,
            # SNS puts here what it could not deliver to the queue (the subscription's RedrivePolicy).
            "Policy": _compact(queue_policy(dlq_arn, topic_arn)),
        }
        if self.options.fifo:
            attrs["FifoQueue"] = "true"
        return attrs

    def _queue_attributes(self, dlq_arn: str, topic_arn: str, queue_arn: str) -> dict[str, str]:
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": self.options.max_receives}
        attrs = {
            "RedrivePolicy": json.dumps(redrive, separators=(",", ":")),
            "Policy": _compact(queue_policy(queue_arn, topic_arn)),
            "VisibilityTimeout": QUEUE_VISIBILITY,
        }
        if self.options.fifo:
            attrs["FifoQueue"] = "true"
        return attrs

    def _existing_queues(self) -> dict[str, dict[str, str] | None]:
        """Every client's DLQ and queue as they are now (None: missing); checks that their policies merge."""
        existing: dict[str, dict[str, str] | None] = {}
        for client in self.options.clients:
            for name in (self.names.dlq(client), self.names.queue(client)):
                existing[name] = current = self._queue_attributes_now(name)
                if current is not None and current.get("Policy"):
                    parse_policy(name, current["Policy"])
        return existing

    def _queue(
        self,
        plan: Plan,
        kind: str,
        name: str,
        wanted: dict[str, str],
        current: dict[str, str] | None,
        dry_run: bool,
    ) -> str:
        arn = self.transport.queue_arn(name)
        if current is None:
            plan.steps.append(Step(kind, name, "create", "", arn))
            if not dry_run:
                self._settled(
                    f"create queue {name}", lambda: self.sqs.create_queue(QueueName=name, Attributes=wanted)
                )
                self.created = True
            return arn
        wanted = {**wanted, "Policy": merged_policy(name, current.get("Policy"), wanted["Policy"])}
        differing = {k: v for k, v in wanted.items() if k != "FifoQueue" and not _same(k, current.get(k), v)}
        if not differing:
            plan.steps.append(Step(kind, name, "ok", "exists", arn))
            return arn
        plan.steps.append(Step(kind, name, "update", _update_detail(differing), arn))
        if not dry_run:
            url = self.transport.queue_url(name)
            self._settled(
                f"update queue {name}",
                lambda: self.sqs.set_queue_attributes(QueueUrl=url, Attributes=differing),
            )
        return arn

    def _queue_attributes_now(self, name: str) -> dict[str, str] | None:
        try:
            url = self.transport.queue_url(name)
        except ResourceNotFound:
            self.transport.queue_url.cache_clear()
            return None
        with aws_errors(f"read queue {name}"):
            return dict(self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"])

    # -- subscription ---------------------------------------------------------------------------
    def _subscription(
        self, plan: Plan, topic_arn: str, queue_arn: str, dlq_arn: str, client: str, dry_run: bool
    ) -> None:
        label = f"{self.names.topic} -> {self.names.queue(client)}"
        wanted = {
            "RawMessageDelivery": "true",
            "FilterPolicy": json.dumps({"model": list(self.options.filter_models)}),
            # What SNS cannot deliver to the queue (a policy or key it may not use, a queue gone) goes to
            # the client's DLQ, where `replay-dlq` finds it, instead of being dropped after SNS's retries.
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn}),
        }
        existing = self._find_subscription(topic_arn, queue_arn)
        if existing is None:
            plan.steps.append(Step("subscription", label, "create", "raw delivery, filter on model, DLQ"))
            if not dry_run:
                self._settled(
                    f"subscribe {self.names.queue(client)} to {self.names.topic}",
                    lambda: self.sns.subscribe(
                        TopicArn=topic_arn,
                        Protocol="sqs",
                        Endpoint=queue_arn,
                        Attributes=wanted,
                        ReturnSubscriptionArn=True,
                    ),
                )
            return
        with aws_errors(f"read subscription {existing}"):
            current = self.sns.get_subscription_attributes(SubscriptionArn=existing)["Attributes"]
        differing = {k: v for k, v in wanted.items() if not _same(k, current.get(k), v)}
        if not differing:
            plan.steps.append(Step("subscription", label, "ok", "raw delivery", existing))
            return
        plan.steps.append(
            Step("subscription", label, "update", "sets " + ", ".join(sorted(differing)), existing)
        )
        if not dry_run:
            for name, value in differing.items():
                self._settled(
                    f"set {name} on {existing}",
                    functools.partial(
                        self.sns.set_subscription_attributes,
                        SubscriptionArn=existing,
                        AttributeName=name,
                        AttributeValue=value,
                    ),
                )

    def _find_subscription(self, topic_arn: str, queue_arn: str) -> str | None:
        if not self._topic_exists(topic_arn):
            return None
        paginator = self.sns.get_paginator("list_subscriptions_by_topic")
        with aws_errors(f"list subscriptions of {self.names.topic}"):
            for page in paginator.paginate(TopicArn=topic_arn):
                for sub in page.get("Subscriptions", []):
                    if sub.get("Endpoint") == queue_arn and sub.get("Protocol") == "sqs":
                        return str(sub["SubscriptionArn"])
        return None


def queue_policy(queue_arn: str, topic_arn: str) -> dict[str, Any]:
    """Only this topic may send to the queue (or, for a DLQ, what it could not deliver)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": OWN_SID,
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        ],
    }


def merged_policy(queue: str, current: str | None, wanted: str) -> str:
    """The Policy to want on a queue: ``wanted``'s own statement in the current policy, all else kept.

    Statements of others (Sid other than reactive's) and top-level fields (Version, Id) stay as they are;
    an older statement of reactive's is replaced in place, or reactive's is appended. When the current
    policy already holds reactive's statement as wanted, it is returned unchanged: nothing to write.
    """
    if not current:
        return wanted
    policy = parse_policy(queue, current)
    statements = _statements(policy)
    own = _statements(json.loads(wanted))[0]
    if _normal([s for s in statements if s.get("Sid") == OWN_SID]) == [_normal(own)]:
        return current
    return _compact({**policy, "Statement": _with_own(statements, own)})


def parse_policy(queue: str, text: str) -> dict[str, Any]:
    """A queue's Policy attribute as a JSON object whose Statement is one statement object or a list of them."""
    try:
        policy = json.loads(text)
    except ValueError as exc:
        raise _unmergeable(queue, f"is not valid JSON ({exc})") from exc
    if not isinstance(policy, dict) or not isinstance(policy.get("Statement"), dict | list):
        raise _unmergeable(queue, "has no Statement (an object or a list of them)")
    if not all(isinstance(s, dict) for s in _statements(policy)):
        raise _unmergeable(queue, "has a Statement entry that is not a JSON object")
    return policy


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    statement = policy["Statement"]  # IAM allows a single statement object instead of a list
    return [statement] if isinstance(statement, dict) else list(statement)


def _with_own(statements: list[dict[str, Any]], own: dict[str, Any]) -> list[dict[str, Any]]:
    """Others' statements in their order, reactive's where its (first) older version was, else last."""
    result: list[dict[str, Any]] = []
    placed = False
    for statement in statements:
        if statement.get("Sid") != OWN_SID:
            result.append(statement)
        elif not placed:
            result.append(own)
            placed = True
    return result if placed else [*result, own]


def _unmergeable(queue: str, why: str) -> PolicyError:
    return PolicyError(
        f"queue {queue}: its Policy {why}; provision keeps the statements of others in a queue policy and "
        f"adds its own ({OWN_SID!r}), which it cannot do here: fix or remove that Policy, then run "
        "`reactive provision` again (nothing was changed)"
    )


def _update_detail(differing: dict[str, str]) -> str:
    detail = "sets " + ", ".join(sorted(differing))
    if "Policy" not in differing:
        return detail
    kept = sum(1 for s in _statements(json.loads(differing["Policy"])) if s.get("Sid") != OWN_SID)
    return detail + (f" (keeps {kept} other statement{'s' if kept != 1 else ''})" if kept else "")


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _same(name: str, current: str | None, wanted: str) -> bool:
    if current is None:
        return False
    if name in ("RedrivePolicy", "Policy", "FilterPolicy"):
        try:
            return _normal(json.loads(current)) == _normal(json.loads(wanted))
        except ValueError:
            return False
    return str(current).lower() == str(wanted).lower()


def _normal(value: Any) -> Any:
    # AWS returns numbers as strings in some policies (maxReceiveCount): compare loosely.
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return str(value)
