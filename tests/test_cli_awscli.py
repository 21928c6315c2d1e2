"""Interop with the AWS CLI against the same moto server.

What `reactive provision` made is what `aws` reports, and a dead letter that `aws sqs send-message` put
in a DLQ is listed and replayed by reactive, attributes intact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.support import services

AWS = Path(sys.executable).parent / "aws"
runner = CliRunner()


@pytest.fixture
def aws(aws_env: dict[str, str]) -> Any:
    if not AWS.exists():
        services.missing("AWS CLI", f"{AWS} is not installed (pip install awscli)")

    def call(*args: str) -> Any:
        argv = [str(AWS), "--endpoint-url", aws_env["AWS_ENDPOINT_URL"], "--output", "json", *args]
        done = subprocess.run(argv, env=os.environ, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None

    return call


def reactive_json(*args: str) -> Any:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.django_db  # status reads the (test) master's outbox too
def test_what_provision_made_is_what_the_aws_cli_reports(aws: Any, aws_env: dict[str, str]) -> None:
    prefix = aws_env["REACTIVE_PREFIX"]
    plan = reactive_json("provision", "--client", "alpha", "--client", "beta", "--max-receives", "3")
    arns = {(s["kind"], s["name"]): s["arn"] for s in plan["steps"]}
    topic_arn = arns[("topic", f"{prefix}-users")]

    subscriptions = aws("sns", "list-subscriptions-by-topic", "--topic-arn", topic_arn)["Subscriptions"]
    by_endpoint = {s["Endpoint"]: s for s in subscriptions}
    status = {c["client"]: c for c in reactive_json("status")["clients"]}
    for client in ("alpha", "beta"):
        queue_arn = arns[("queue", f"{prefix}-{client}")]
        dlq_arn = arns[("dlq", f"{prefix}-{client}-dlq")]
        subscription = by_endpoint[queue_arn]
        assert subscription["Protocol"] == "sqs"
        assert subscription["SubscriptionArn"] == status[client]["subscription"]["arn"]
        attributes = aws(
            "sns", "get-subscription-attributes", "--subscription-arn", subscription["SubscriptionArn"]
        )
        assert attributes["Attributes"]["RawMessageDelivery"] == "true"

        url = aws("sqs", "get-queue-url", "--queue-name", f"{prefix}-{client}")["QueueUrl"]
        queue = aws("sqs", "get-queue-attributes", "--queue-url", url, "--attribute-names", "All")[
            "Attributes"
        ]
        assert queue["QueueArn"] == queue_arn
        redrive = json.loads(queue["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == dlq_arn and int(redrive["maxReceiveCount"]) == 3
        assert (
            json.loads(queue["Policy"])["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"]
            == topic_arn
        )
        dlq_url = aws("sqs", "get-queue-url", "--queue-name", f"{prefix}-{client}-dlq")["QueueUrl"]
        dlq = aws("sqs", "get-queue-attributes", "--queue-url", dlq_url, "--attribute-names", "All")[
            "Attributes"
        ]
        assert dlq["QueueArn"] == dlq_arn and dlq["MessageRetentionPeriod"] == "1209600"
    assert len(subscriptions) == 2


def test_a_message_sent_by_the_aws_cli_is_listed_and_replayed(aws: Any, provisioned: dict[str, str]) -> None:
    prefix = provisioned["REACTIVE_PREFIX"]
    queue_url = aws("sqs", "get-queue-url", "--queue-name", f"{prefix}-alpha")["QueueUrl"]
    dlq_url = aws("sqs", "get-queue-url", "--queue-name", f"{prefix}-alpha-dlq")["QueueUrl"]
    body = '{"schema": 1, "model": "auth.user", "action": "update", "key": "42", "version": 7, "data": {}}'
    attributes = {
        "model": {"DataType": "String", "StringValue": "auth.user"},
        "attempt": {"DataType": "Number", "StringValue": "3"},
    }
    sent = aws(
        "sqs", "send-message", "--queue-url", dlq_url, "--message-body", body,
        "--message-attributes", json.dumps(attributes),
    )  # fmt: skip

    (listed,) = reactive_json("dlq", "list", "--client", "alpha")["messages"]
    assert listed["message_id"] == sent["MessageId"]
    assert listed["body"] == body and (listed["action"], listed["key"], listed["version"]) == (
        "update",
        "42",
        7,
    )
    assert listed["message_attributes"] == attributes

    summary = reactive_json("replay-dlq", "--client", "alpha", "--yes")
    assert (summary["moved"], summary["failed"], summary["left"]) == (1, 0, 0)

    received = aws(
        "sqs", "receive-message", "--queue-url", queue_url, "--message-attribute-names", "All",
        "--wait-time-seconds", "1",
    )["Messages"]  # fmt: skip
    assert [(m["Body"], m["MessageAttributes"]) for m in received] == [(body, attributes)]
    left = aws("sqs", "get-queue-attributes", "--queue-url", dlq_url, "--attribute-names", "All")[
        "Attributes"
    ]
    assert (left["ApproximateNumberOfMessages"], left["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")
