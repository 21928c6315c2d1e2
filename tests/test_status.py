"""Status against moto's server: depths, dead letters, subscriptions, and the outbox backlog."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from reactive import outbox, status
from reactive.outbox import OutboxEvent
from reactive.transport.sqs import SqsTransport


def put(sqs: SqsTransport, queue: str, body: str = "x") -> None:
    sqs.sqs.send_message(QueueUrl=sqs.queue_url(queue), MessageBody=body)


def test_a_healthy_system_reports_depths_and_raw_subscriptions(sqs: SqsTransport) -> None:
    prefix = sqs.topic_name.removesuffix("-users")
    put(sqs, f"{prefix}-alpha")
    put(sqs, f"{prefix}-alpha")
    sqs.receive(f"{prefix}-alpha", max_messages=1, wait_seconds=0, visibility_timeout=60)

    clients = {c.client: c for c in status.aws_status(sqs, ["alpha", "beta"])}

    alpha = clients["alpha"]
    assert (alpha.queue_depth and (alpha.queue_depth.visible, alpha.queue_depth.in_flight)) == (1, 1)
    assert alpha.dead_letters == 0
    assert alpha.subscription.present and alpha.subscription.raw_delivery
    assert alpha.subscription.filter_policy == {"model": ["auth.user"]}
    assert alpha.subscription.dead_letter_target == sqs.queue_arn(f"{prefix}-alpha-dlq")
    assert alpha.problems() == [] and clients["beta"].problems() == []


def test_dead_letters_missing_queues_and_non_raw_delivery_are_problems(sqs: SqsTransport) -> None:
    prefix = sqs.topic_name.removesuffix("-users")
    put(sqs, f"{prefix}-beta-dlq")
    beta_sub = next(c for c in status.aws_status(sqs, ["beta"])).subscription.arn
    sqs.sns.set_subscription_attributes(
        SubscriptionArn=beta_sub, AttributeName="RawMessageDelivery", AttributeValue="false"
    )

    report = status.collect(
        ["alpha", "beta", "gamma"], status.OutboxStatus(False, detail="n/a"), transport=sqs
    )

    problems = "\n".join(report.problems())
    assert "beta: 1 message(s) in the DLQ" in problems
    assert "beta: the subscription does not use raw message delivery" in problems
    assert f"gamma: queue {prefix}-gamma is missing" in problems
    assert "gamma: " in problems and "not subscribed" in problems
    assert not any(p.startswith("alpha") for p in report.problems())
    data = report.to_dict()
    assert data["ok"] is False and data["clients"][2]["queue_depth"] is None


def outbox_row(**fields: object) -> OutboxEvent:
    return OutboxEvent.objects.create(
        model="auth.user", action="update", key="1", event_id=uuid.uuid4(), **fields
    )


@pytest.mark.django_db
def test_the_outbox_backlog_and_its_age_threshold() -> None:
    assert status.outbox_status() == status.OutboxStatus(True, pending=0, oldest_age_seconds=None, failing=0)
    outbox_row(occurred_at=timezone.now() - timedelta(minutes=10))
    outbox_row(sent_at=timezone.now())

    found = status.outbox_status()

    assert found.available and found.pending == 1
    assert found.oldest_age_seconds is not None and 590 < found.oldest_age_seconds < 700
    assert found.problems(max_age=900) == []
    assert "oldest pending outbox row is 6" in found.problems(max_age=300)[0]
    assert "failing" not in found.problems(max_age=300)[0]


@pytest.mark.django_db
def test_the_outbox_status_says_why_rows_are_failing() -> None:
    for attempts, error in ((0, ""), (7, "MessageTooLong: 300000 bytes"), (2, "Throttling")):
        outbox_row(occurred_at=timezone.now() - timedelta(minutes=10), attempts=attempts, last_error=error)

    found = status.outbox_status()

    assert (found.pending, found.failing, found.last_error) == (3, 2, "MessageTooLong: 300000 bytes")
    assert found.problems(max_age=300)[0].endswith("; 2 failing, last error: MessageTooLong: 300000 bytes")


@pytest.mark.django_db(databases=["default", "users"])
def test_the_outbox_status_covers_every_database_outbox_rows_are_written_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A master that keeps users in two databases (track(databases=[...])): a backlog stuck in either shows."""
    monkeypatch.setattr(outbox, "databases", lambda: ["default", "users"])
    outbox_row(occurred_at=timezone.now() - timedelta(minutes=5), attempts=1, last_error="Throttling")
    OutboxEvent.objects.using("users").create(
        model="auth.user",
        action="update",
        key="2",
        event_id=uuid.uuid4(),
        occurred_at=timezone.now() - timedelta(minutes=20),
        attempts=4,
        last_error="AuthorizationError: not allowed to publish",
    )

    found = status.outbox_status()

    assert (found.pending, found.failing) == (2, 2)
    assert found.last_error == "AuthorizationError: not allowed to publish"  # the older row's
    assert found.oldest_age_seconds is not None and 1190 < found.oldest_age_seconds < 1300
    assert "oldest pending outbox row is 12" in found.problems(max_age=900)[0]
    assert status.outbox_status("default").pending == 1

    real_backlog = outbox.backlog

    def users_down(using: str | None = None) -> outbox.Backlog:
        if using == "users":
            raise OperationalError("could not connect to server")
        return real_backlog(using)

    monkeypatch.setattr(outbox, "backlog", users_down)
    half = status.outbox_status()  # the readable database is still shown, the other named as a problem
    assert half.available and (half.pending, half.failing, half.last_error) == (1, 1, "Throttling")
    assert half.problems(max_age=900) == [
        "master: cannot read the master's outbox (database 'users'): could not connect to server"
    ]
    assert len(half.problems(max_age=60)) == 2  # and default's own age

    monkeypatch.setattr(outbox, "databases", lambda: ["users"])
    assert status.outbox_status(configured=True).problems(max_age=900) == [
        "master: cannot read the master's outbox: could not connect to server"
    ]


def test_a_subscription_without_its_dlq_is_a_problem(sqs: SqsTransport) -> None:
    """Made by an earlier version, or changed by hand: SNS would drop what it cannot deliver."""
    prefix = sqs.topic_name.removesuffix("-users")
    alpha, beta = status.aws_status(sqs, ["alpha", "beta"])
    sqs.sns.set_subscription_attributes(
        SubscriptionArn=alpha.subscription.arn, AttributeName="RedrivePolicy", AttributeValue="{}"
    )
    elsewhere = json.dumps({"deadLetterTargetArn": sqs.queue_arn(f"{prefix}-alpha-dlq")})
    sqs.sns.set_subscription_attributes(
        SubscriptionArn=beta.subscription.arn, AttributeName="RedrivePolicy", AttributeValue=elsewhere
    )

    problems = [p for c in status.aws_status(sqs, ["alpha", "beta"]) for p in c.problems()]

    assert problems == [
        f"alpha: what SNS cannot deliver is not kept in {prefix}-alpha-dlq (run `reactive provision`)",
        f"beta: what SNS cannot deliver is not kept in {prefix}-beta-dlq (run `reactive provision`)",
    ]
