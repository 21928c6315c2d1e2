"""Provisioning against moto's server over HTTP: everything made, idempotent, dry-run, FIFO."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from reactive.provision import Options, Provisioner


def test_provision_creates_everything_then_changes_nothing(aws_env: dict[str, str]) -> None:
    prefix = aws_env["REACTIVE_PREFIX"]
    first = Provisioner(Options(clients=["alpha", "beta"], max_receives=3)).run()
    assert first.changes == 7  # topic, 2 x (dlq, queue, subscription)
    second = Provisioner(Options(clients=["alpha", "beta"], max_receives=3)).run()
    assert second.changes == 0 and all(step.action == "ok" for step in second.steps)

    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=f"{prefix}-alpha")["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert (
        redrive["deadLetterTargetArn"].endswith(f"{prefix}-alpha-dlq")
        and int(redrive["maxReceiveCount"]) == 3
    )
    statement = json.loads(attrs["Policy"])["Statement"][0]
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"].endswith(f":{prefix}-users")

    sns = boto3.client("sns")
    topic = next(arn for arn in all_topics() if arn.endswith(f":{prefix}-users"))
    subs = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert sorted(s["Endpoint"].rsplit(":", 1)[1] for s in subs) == [f"{prefix}-alpha", f"{prefix}-beta"]
    for sub in subs:
        sub_attrs = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
        assert sub_attrs["RawMessageDelivery"] == "true"


def test_a_changed_setting_is_updated_in_place(aws_env: dict[str, str]) -> None:
    Provisioner(Options(clients=["alpha"], max_receives=5)).run()
    plan = Provisioner(Options(clients=["alpha"], max_receives=2)).run()
    assert [(s.kind, s.action) for s in plan.steps if s.action != "ok"] == [("queue", "update")]


def test_dry_run_changes_nothing(aws_env: dict[str, str]) -> None:
    plan = Provisioner(Options(clients=["alpha"])).run(dry_run=True)
    assert plan.changes == 4 and not plan.applied
    queues = boto3.client("sqs").list_queues(QueueNamePrefix=aws_env["REACTIVE_PREFIX"])
    assert queues.get("QueueUrls", []) == []


def test_fifo_variants(aws_env: dict[str, str]) -> None:
    plan = Provisioner(Options(clients=["alpha"], fifo=True)).run()
    assert {s.name for s in plan.steps if s.kind in ("topic", "queue", "dlq")} == {
        f"{aws_env['REACTIVE_PREFIX']}-users.fifo",
        f"{aws_env['REACTIVE_PREFIX']}-alpha.fifo",
        f"{aws_env['REACTIVE_PREFIX']}-alpha-dlq.fifo",
    }
    assert Provisioner(Options(clients=["alpha"], fifo=True)).run().changes == 0


def test_fifo_publish_reaches_the_queue_in_key_order(aws_env: dict[str, str]) -> None:
    from reactive.events import Event, encode
    from reactive.transport.base import OutgoingMessage
    from reactive.transport.sqs import SqsTransport

    Provisioner(Options(clients=["alpha"], fifo=True)).run()
    transport = SqsTransport(f"{aws_env['REACTIVE_PREFIX']}-users.fifo")
    events = [Event(model="auth.user", action="update", key="1", version=v, data={}) for v in (1, 2, 3)]
    messages = [
        OutgoingMessage(
            str(e.version), encode(e), e.message_attributes(), group_id=e.key, dedup_id=e.dedup_id
        )
        for e in events
    ]
    assert len(transport.publish(messages).succeeded) == 3
    got = transport.receive(f"{aws_env['REACTIVE_PREFIX']}-alpha.fifo", wait_seconds=1)
    assert [json.loads(m.body)["version"] for m in got] == [1, 2, 3]


@pytest.mark.parametrize("name", ["Not Valid", "alpha\n", "-alpha", "a" * 41])
def test_bad_client_names_are_refused(aws_env: dict[str, str], name: str) -> None:
    """A trailing newline too (a ConfigMap's block scalar): it named queues no one else would find."""
    from reactive.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid client name"):
        Provisioner(Options(clients=[name])).run()


def test_the_max_receives_variable_is_the_commands_default(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`source var/up.env` (REACTIVE_MAX_RECEIVES=2) then `reactive provision` keeps what `up` provisioned."""
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("REACTIVE_MAX_RECEIVES", "2")
    assert CliRunner().invoke(app, ["provision", "--client", "alpha"]).exit_code == 0
    assert redrive_of(f"{aws_env['REACTIVE_PREFIX']}-alpha")["maxReceiveCount"] == 2
    assert CliRunner().invoke(app, ["provision", "--client", "alpha", "--max-receives", "4"]).exit_code == 0
    assert redrive_of(f"{aws_env['REACTIVE_PREFIX']}-alpha")["maxReceiveCount"] == 4

    monkeypatch.setenv("REACTIVE_MAX_RECEIVES", "many")
    refused = CliRunner().invoke(app, ["provision", "--client", "alpha"])
    assert refused.exit_code == 1
    assert "REACTIVE_MAX_RECEIVES must be a whole number from 1 to 1000, got 'many'" in str(refused.exception)


def redrive_of(queue: str) -> dict[str, object]:
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]
    return dict(json.loads(attrs["RedrivePolicy"]))


@pytest.mark.parametrize(
    ("region", "prefix"), [("cn-north-1", "arn:aws-cn:"), ("us-gov-west-1", "arn:aws-us-gov:")]
)
def test_arns_name_the_partition_of_the_region(
    monkeypatch: pytest.MonkeyPatch, region: str, prefix: str
) -> None:
    from reactive.transport.sqs import SqsTransport

    class Sts:
        def get_caller_identity(self) -> dict[str, str]:
            return {"Account": "123456789012"}

    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    transport = SqsTransport("reactive-users", sns=object(), sqs=object(), sts=Sts())
    assert transport.topic_arn == f"{prefix}sns:{region}:123456789012:reactive-users"
    assert transport.queue_arn("reactive-alpha").startswith(f"{prefix}sqs:{region}:")


def test_a_queue_name_sqs_would_refuse_stops_provisioning_before_anything_is_created(
    monkeypatch: pytest.MonkeyPatch, aws_env: dict[str, str]
) -> None:
    from reactive.errors import ConfigError
    from reactive.provision import Options, Provisioner

    monkeypatch.setenv("REACTIVE_PREFIX", "p" * 40)
    with pytest.raises(ConfigError, match="SQS allows 80"):
        Provisioner(Options(clients=["c" * 36])).run()
    assert not [arn for arn in all_topics() if "p" * 40 in arn]


def test_provision_fifo_says_the_other_processes_need_reactive_fifo(
    monkeypatch: pytest.MonkeyPatch, aws_env: dict[str, str]
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.delenv("REACTIVE_FIFO", raising=False)
    result = CliRunner().invoke(app, ["provision", "--client", "alpha", "--fifo", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "set REACTIVE_FIFO=1" in result.stderr
    monkeypatch.setenv("REACTIVE_FIFO", "1")
    quiet = CliRunner().invoke(app, ["provision", "--client", "alpha", "--fifo", "--dry-run"])
    assert "REACTIVE_FIFO" not in quiet.stderr


def all_topics() -> list[str]:
    """Every topic's ARN, page after page: moto's server keeps every test's topics, 100 to a page."""
    pages = boto3.client("sns").get_paginator("list_topics").paginate()
    return [topic["TopicArn"] for page in pages for topic in page["Topics"]]


def topic_arn_of(prefix: str) -> str:
    return next(arn for arn in all_topics() if arn.endswith(f":{prefix}-users"))


def test_what_sns_cannot_deliver_goes_to_the_clients_dlq(aws_env: dict[str, str]) -> None:
    prefix = aws_env["REACTIVE_PREFIX"]
    Provisioner(Options(clients=["alpha"])).run()
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = topic_arn_of(prefix)

    (sub,) = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    sub_attrs = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
    assert json.loads(sub_attrs["RedrivePolicy"])["deadLetterTargetArn"].endswith(f":{prefix}-alpha-dlq")
    dlq_url = sqs.get_queue_url(QueueName=f"{prefix}-alpha-dlq")["QueueUrl"]
    policy = json.loads(
        sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["Policy"])["Attributes"]["Policy"]
    )
    (statement,) = policy["Statement"]
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
    assert statement["Resource"].endswith(f":{prefix}-alpha-dlq")
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == topic


def test_resources_made_before_the_subscription_dlq_are_brought_up_to_date(aws_env: dict[str, str]) -> None:
    """An earlier version subscribed without a RedrivePolicy and left the DLQ without a policy."""
    prefix = aws_env["REACTIVE_PREFIX"]
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name=f"{prefix}-users")["TopicArn"]
    sqs.create_queue(QueueName=f"{prefix}-alpha-dlq")
    queue_url = sqs.create_queue(QueueName=f"{prefix}-alpha")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"}
    )

    plan = Provisioner(Options(clients=["alpha"])).run()

    updates = {s.kind: s.detail for s in plan.steps if s.action == "update"}
    assert "Policy" in updates["dlq"] and "RedrivePolicy" in updates["subscription"]
    assert Provisioner(Options(clients=["alpha"])).run().changes == 0


def test_a_refusal_of_what_was_just_created_is_tried_again(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS: a queue is usable about a second after its creation, and a RedrivePolicy checks its target."""
    from botocore.exceptions import ClientError

    from reactive import provision

    real = boto3.client("sqs")
    refusals: list[str] = []

    class NewDlqNotKnownYet:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def create_queue(self, QueueName: str, Attributes: dict[str, str]) -> object:
            if "RedrivePolicy" in Attributes and not refusals:
                refusals.append(QueueName)
                error = {"Code": "InvalidParameterValue", "Message": "Dead letter target does not exist"}
                raise ClientError(
                    {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}, "CreateQueue"
                )  # type: ignore[typeddict-item]
            return real.create_queue(QueueName=QueueName, Attributes=Attributes)

    pauses: list[float] = []
    monkeypatch.setattr(provision, "_pause", pauses.append)
    plan = Provisioner(Options(clients=["alpha"]), sqs=NewDlqNotKnownYet()).run()

    assert refusals == [f"{aws_env['REACTIVE_PREFIX']}-alpha"] and pauses
    assert plan.changes == 4 and redrive_of(f"{aws_env['REACTIVE_PREFIX']}-alpha")["maxReceiveCount"] == 5


def test_a_refusal_when_nothing_was_created_is_reported_at_once(
    provisioned: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    from reactive import provision
    from reactive.errors import TransportError

    real = boto3.client("sqs")

    class Refusing:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def set_queue_attributes(self, **kwargs: object) -> object:
            error = {"Code": "InvalidAttributeValue", "Message": "no"}
            raise ClientError(
                {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}, "SetQueueAttributes"
            )  # type: ignore[typeddict-item]

    monkeypatch.setattr(provision, "_pause", lambda seconds: pytest.fail("waited"))
    with pytest.raises(TransportError, match="InvalidAttributeValue"):
        Provisioner(Options(clients=["alpha"], max_receives=9), sqs=Refusing()).run()


# -- statements of others in a queue policy -------------------------------------------------------
CROSS_ACCOUNT = {
    "Sid": "partner-consumes",
    "Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::210987654321:root"},
    "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage"],
    "Resource": "*",
}
TLS_ONLY = {
    "Sid": "tls-only",
    "Effect": "Deny",
    "Principal": "*",
    "Action": "sqs:*",
    "Resource": "*",
    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
}


def policy_of(queue: str) -> dict[str, Any]:
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    return dict(
        json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])
    )


def set_policy(queue: str, policy: dict[str, Any]) -> None:
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})


def own_statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in policy["Statement"] if s.get("Sid") == "topic-sends"]


def test_statements_of_others_in_a_queue_and_a_dlq_policy_survive_provisioning(
    aws_env: dict[str, str],
) -> None:
    prefix = aws_env["REACTIVE_PREFIX"]
    Provisioner(Options(clients=["alpha"])).run()
    added: dict[str, dict[str, Any]] = {}
    for queue, theirs in ((f"{prefix}-alpha", CROSS_ACCOUNT), (f"{prefix}-alpha-dlq", TLS_ONLY)):
        policy = policy_of(queue)
        policy["Statement"].append(theirs)  # an operator adds theirs next to reactive's
        set_policy(queue, policy)
        added[queue] = policy

    plan = Provisioner(Options(clients=["alpha"])).run()

    assert {queue: policy_of(queue) for queue in added} == added  # nothing lost, nothing written
    assert plan.changes == 0 and all(step.action == "ok" for step in plan.steps)


def test_a_policy_of_the_operators_own_gets_reactives_statement_added(aws_env: dict[str, str]) -> None:
    """An operator wrote the DLQ's policy anew: an Id, and one statement as an object, not a list."""
    prefix = aws_env["REACTIVE_PREFIX"]
    dlq = f"{prefix}-alpha-dlq"
    Provisioner(Options(clients=["alpha"])).run()
    set_policy(dlq, {"Version": "2012-10-17", "Id": "ops-dlq", "Statement": TLS_ONLY})

    plan = Provisioner(Options(clients=["alpha"])).run()

    policy = policy_of(dlq)
    assert policy["Id"] == "ops-dlq" and policy["Version"] == "2012-10-17"
    assert policy["Statement"][0] == TLS_ONLY
    (own,) = own_statements(policy)
    assert own["Resource"].endswith(f":{dlq}")
    assert own["Condition"]["ArnEquals"]["aws:SourceArn"] == topic_arn_of(prefix)
    assert [(s.kind, s.action, s.detail) for s in plan.steps if s.action != "ok"] == [
        ("dlq", "update", "sets Policy (keeps 1 other statement)")
    ]
    again = Provisioner(Options(clients=["alpha"])).run()
    assert again.changes == 0 and policy_of(dlq) == policy


def test_an_outdated_own_statement_is_replaced_and_the_operators_kept(aws_env: dict[str, str]) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    prefix = aws_env["REACTIVE_PREFIX"]
    queue = f"{prefix}-alpha"
    Provisioner(Options(clients=["alpha"])).run()
    wanted = own_statements(policy_of(queue))[0]
    outdated = {**wanted, "Action": ["sqs:SendMessage", "sqs:GetQueueUrl"], "Condition": {}}
    set_policy(
        queue, {"Version": "2012-10-17", "Id": "ops", "Statement": [TLS_ONLY, outdated, CROSS_ACCOUNT]}
    )

    dry = CliRunner().invoke(app, ["provision", "--client", "alpha", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["applied"] is False and report["changes"] == 1
    assert [(s["kind"], s["action"], s["detail"]) for s in report["steps"] if s["action"] != "ok"] == [
        ("queue", "update", "sets Policy (keeps 2 other statements)")
    ]
    assert policy_of(queue)["Statement"][1] == outdated  # the dry run wrote nothing

    plan = Provisioner(Options(clients=["alpha"])).run()
    assert [(s.kind, s.action) for s in plan.steps if s.action != "ok"] == [("queue", "update")]
    assert policy_of(queue) == {
        "Version": "2012-10-17",
        "Id": "ops",
        "Statement": [TLS_ONLY, wanted, CROSS_ACCOUNT],
    }

    again = CliRunner().invoke(app, ["provision", "--client", "alpha", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["changes"] == 0
    assert len(own_statements(policy_of(queue))) == 1


class PolicyReadsAs:
    """Real SQS, except that one queue's Policy reads as ``policy`` (moto refuses to store a malformed one);
    every write is recorded."""

    def __init__(self, queue: str, policy: str) -> None:
        self.real = boto3.client("sqs")
        self.queue, self.policy = queue, policy
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        answer = self.real.get_queue_attributes(QueueUrl=QueueUrl, AttributeNames=AttributeNames)
        if QueueUrl.rsplit("/", 1)[1] == self.queue:
            answer["Attributes"]["Policy"] = self.policy
        return dict(answer)

    def create_queue(self, **kwargs: Any) -> object:
        self.writes.append(f"create {kwargs['QueueName']}")
        return self.real.create_queue(**kwargs)

    def set_queue_attributes(self, **kwargs: Any) -> object:
        self.writes.append(f"set {kwargs['QueueUrl']}")
        return self.real.set_queue_attributes(**kwargs)


@pytest.mark.parametrize(
    ("policy", "why"),
    [
        ("{not json", "is not valid JSON"),
        ('{"Version": "2012-10-17", "Id": "ops"}', "has no Statement"),
        ('{"Version": "2012-10-17", "Statement": "deny everything"}', "has no Statement"),
        ('{"Version": "2012-10-17", "Statement": ["tls-only"]}', "has a Statement entry that is not"),
    ],
    ids=["not-json", "no-statement", "statement-a-string", "entry-a-string"],
)
def test_a_policy_it_cannot_read_stops_provisioning_before_any_write(
    aws_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    policy: str,
    why: str,
) -> None:
    from cli import main
    from reactive import provision
    from reactive.errors import ReactiveError

    prefix = aws_env["REACTIVE_PREFIX"]
    boto3.client("sqs").create_queue(QueueName=f"{prefix}-beta")  # beta's queue exists; nothing else does
    sqs = PolicyReadsAs(f"{prefix}-beta", policy)

    for dry_run in (True, False):
        with pytest.raises(ReactiveError, match=f"queue {prefix}-beta: its Policy {why}") as refused:
            Provisioner(Options(clients=["alpha", "beta"]), sqs=sqs).run(dry_run=dry_run)
        assert refused.value.exit_code == 1
    assert sqs.writes == []
    assert not [arn for arn in all_topics() if f":{prefix}-" in arn]

    real_client = provision.make_client
    monkeypatch.setattr(
        provision, "make_client", lambda service: sqs if service == "sqs" else real_client(service)
    )
    monkeypatch.setattr("sys.argv", ["reactive", "provision", "--client", "alpha", "--client", "beta"])
    with pytest.raises(SystemExit) as exited:
        main.run()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: queue {prefix}-beta: its Policy"), err
    assert "Traceback" not in err and sqs.writes == []
