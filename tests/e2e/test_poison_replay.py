"""Poison and replay end to end: events the replica refuses reach the DLQ through a running listener,
`reactive dlq list --diagnose` says why, and once the cause is fixed `reactive replay-dlq` moves them back
and the same listener applies them."""

from __future__ import annotations

import json
import os
import subprocess

import boto3
import pytest

from tests.support.services import eventually
from tests.support.sites import VENV_BIN, Deployment

pytestmark = pytest.mark.e2e

LOCAL_ADMIN = """
from django.contrib.auth import get_user_model
# alpha's own administrator is called "carol": a replica never takes over a staff account.
get_user_model().objects.create_user("carol", is_staff=True)
print("applied")
"""
LOCAL_ADMIN_RENAMED = """
from django.contrib.auth import get_user_model
print(get_user_model().objects.filter(username="carol").update(username="carol-admin") and "applied")
"""
CAROL_ON_ALPHA = """
import json
from django.contrib.auth import get_user_model
from reactive.replica import ReplicaState
user = get_user_model().objects.filter(username="carol").first()
state = ReplicaState.objects.filter(local_pk=str(user.pk), deleted=False).first() if user else None
print(json.dumps(user and [user.first_name, state and state.key]))
"""


def reactive(system: Deployment, site: str, *args: str) -> str:
    done = subprocess.run(
        [str(VENV_BIN / "reactive"), *args], env=system.env(site), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"reactive {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return done.stdout


def in_dlq(sqs: object, url: str) -> int:
    attrs = sqs.get_queue_attributes(  # type: ignore[attr-defined]
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_refused_events_reach_the_dlq_are_explained_and_applied_after_the_fix(deployment: Deployment) -> None:
    prefix = os.environ["REACTIVE_PREFIX"]
    sqs = boto3.client("sqs")
    queue_url = sqs.get_queue_url(QueueName=f"{prefix}-alpha")["QueueUrl"]
    dlq_url = sqs.get_queue_url(QueueName=f"{prefix}-alpha-dlq")["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"VisibilityTimeout": "1"})  # retries come fast
    assert deployment.python("alpha", LOCAL_ADMIN).strip() == "applied"
    deployment.start_worker()
    deployment.start_listener("alpha", "--wait", "1")

    carol_key = deployment.python(
        "master",
        """
        from django.contrib.auth import get_user_model
        carol = get_user_model().objects.create_user("carol", "carol@example.com", "pw", first_name="Carol")
        carol.first_name = "Caroline"; carol.save()
        print(carol.pk)
        """,
    ).strip()

    eventually(lambda: in_dlq(sqs, dlq_url) == 2, timeout=90, what="both carol events in alpha's DLQ")
    assert "bad message" in deployment.log("listen-alpha")  # the listener lived on and said so
    listed = json.loads(
        reactive(deployment, "alpha", "dlq", "list", "--client", "alpha", "--diagnose", "--json")
    )
    assert sorted((m["action"], m["key"]) for m in listed["messages"]) == [
        ("insert", carol_key),
        ("update", carol_key),
    ]
    for message in listed["messages"]:
        assert "username 'carol' is held by a local staff user" in message["why"], message["why"]

    assert deployment.python("alpha", LOCAL_ADMIN_RENAMED).strip() == "applied"  # the cause, fixed
    rechecked = json.loads(
        reactive(deployment, "alpha", "dlq", "list", "--client", "alpha", "--diagnose", "--json")
    )
    assert all("applies now" in m["why"] for m in rechecked["messages"])
    assert in_dlq(sqs, dlq_url) == 2  # looking twice consumed nothing

    summary = json.loads(reactive(deployment, "alpha", "replay-dlq", "--client", "alpha", "--yes", "--json"))
    assert (summary["moved"], summary["failed"]) == (2, 0)

    def carol_replicated() -> bool:
        return json.loads(deployment.python("alpha", CAROL_ON_ALPHA)) == ["Caroline", carol_key]

    eventually(carol_replicated, timeout=60, what="the replayed events applied by the running listener")
    assert in_dlq(sqs, dlq_url) == 0
