"""Nothing lost: SNS down at save time, a listener killed mid-batch, poison among good messages, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from urllib.parse import urlparse

import boto3
import pytest

from reactive.events import Event, encode
from reactive.transport.base import OutgoingMessage
from reactive.transport.sqs import SqsTransport
from tests.support.proxy import Proxy
from tests.support.services import eventually, free_port
from tests.support.sites import ROOT, VENV_BIN, Deployment

pytestmark = pytest.mark.e2e


def count_users(system: Deployment, site: str) -> int:
    """Read straight from the site's SQLite file: polling through a Django process a second would cost a
    core that the listener under test needs."""
    return system.sql(site, "SELECT COUNT(*) FROM auth_user")


def depth(queue: str) -> int:
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attrs[n]) for n in names)


def publish_inserts(prefix: str, count: int, start: int = 1) -> None:
    transport = SqsTransport(f"{prefix}-users")
    messages = []
    for n in range(start, start + count):
        event = Event(
            model="auth.user", action="insert", key=str(n), version=n, data={"username": f"user{n}"}
        )
        messages.append(OutgoingMessage(str(n), encode(event), event.message_attributes()))
    transport.publish(messages)


def test_sns_outage_at_save_time_loses_nothing(deployment: Deployment) -> None:
    endpoint = deployment.base_env["AWS_ENDPOINT_URL"]
    proxy = Proxy(target_port=urlparse(endpoint).port or 80, port=free_port())
    retry = {
        "REACTIVE_RELAY_BACKOFF": "0.5",
        "REACTIVE_RELAY_BACKOFF_MAX": "2",
        "REACTIVE_SWEEP_INTERVAL": "1",
    }
    master_aws = {"AWS_ENDPOINT_URL": proxy.url, **retry}
    deployment.start_worker(**master_aws)
    schedule = str(deployment.workdir / "beat-schedule")
    beat = [str(VENV_BIN / "celery"), "-A", "master_site", "beat", "-s", schedule, "-l", "warning"]
    deployment.start("master", beat, "beat", **master_aws)
    for client in deployment.clients:
        deployment.start_listener(client, "--wait", "2")

    deployment.python(  # SNS is unreachable (the proxy is down): every save still succeeds
        "master",
        """
        from django.contrib.auth import get_user_model
        from reactive.outbox import OutboxEvent
        U = get_user_model()
        for i in range(50):
            U.objects.create_user(f"outage{i}", first_name=f"N{i}")
        """,
    )
    pending = """
    from reactive.outbox import OutboxEvent
    print(OutboxEvent.objects.filter(sent_at__isnull=True, attempts__gte=1).count())
    """
    eventually(
        lambda: deployment.python("master", pending).strip() == "50", timeout=60, what="relay attempts fail"
    )
    assert count_users(deployment, "alpha") == 0

    proxy.up()
    try:
        for client in deployment.clients:
            eventually(
                lambda c=client: count_users(deployment, c) == 50, timeout=90, what=f"{client} gets all 50"
            )
        unsent = "from reactive.outbox import OutboxEvent\nprint(OutboxEvent.objects.filter(sent_at__isnull=True).count())"
        # A row is marked sent once its PublishBatch returns: a listener may apply it before that commit.
        eventually(
            lambda: deployment.python("master", unsent).strip() == "0", timeout=30, what="all marked sent"
        )
    finally:
        proxy.down()


def test_a_listener_killed_mid_batch_loses_nothing(deployment: Deployment) -> None:
    prefix = deployment.base_env["REACTIVE_PREFIX"]
    for start in range(1, 101, 10):  # more would only slow moto down: its sends scan the whole queue
        publish_inserts(prefix, 10, start)
    sqs = boto3.client("sqs")  # messages in flight when the listener dies come back after 2 s
    url = sqs.get_queue_url(QueueName=f"{prefix}-alpha")["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "2"})
    listener = deployment.start_listener("alpha", "--wait", "1")
    progress = "SELECT COUNT(*) FROM auth_user"
    eventually(lambda: deployment.sql("alpha", progress) > 0, timeout=60, interval=0.01, what="some progress")
    os.killpg(listener.pid, signal.SIGKILL)
    listener.wait()
    partial = count_users(deployment, "alpha")
    assert partial < 100, "the listener finished before it was killed; the test proved nothing"
    deployment.start_listener("alpha", "--wait", "1")
    eventually(
        lambda: count_users(deployment, "alpha") == 100, timeout=120, what="a restarted listener converges"
    )
    eventually(lambda: depth(f"{prefix}-alpha") == 0, timeout=30, what="every message acked")


def test_poison_goes_to_the_dlq_and_the_listener_lives_on(deployment: Deployment) -> None:
    prefix = deployment.base_env["REACTIVE_PREFIX"]
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=f"{prefix}-alpha")["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "1"})
    poison = [
        "not json at all",
        '{"schema": 99}',
        '{"schema": 1, "action": "explode", "model": "auth.user", "key": "1", "version": 1}',
        "y" * 200_000,
    ]
    good = [
        encode(Event(model="auth.user", action="insert", key=str(k), version=k, data={"username": f"g{k}"}))
        for k in (1, 2)
    ]
    for body in [poison[0], good[0], poison[1], poison[2], poison[3], good[1]]:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    listener = deployment.start_listener("alpha", "--wait", "1")
    eventually(lambda: depth(f"{prefix}-alpha-dlq") == 4, timeout=90, what="poison in the DLQ")
    assert count_users(deployment, "alpha") == 2
    assert depth(f"{prefix}-alpha") == 0
    assert listener.poll() is None, "the listener died on bad input"
    log = deployment.log("listen-alpha")
    assert log.count("bad message") >= 4 and "Traceback" not in log


def test_sigterm_during_a_long_poll_exits_zero_promptly(deployment: Deployment) -> None:
    listener = deployment.start_listener("alpha")  # waits 20 s per poll
    eventually(lambda: "polling" in deployment.log("listen-alpha"), timeout=30, what="listener started")
    os.killpg(listener.pid, signal.SIGTERM)
    assert listener.wait(timeout=10) == 0


def test_several_clients_run_under_one_supervisor(deployment: Deployment) -> None:
    prefix = deployment.base_env["REACTIVE_PREFIX"]
    publish_inserts(prefix, 5)
    env = deployment.env("alpha")
    env.pop("DATABASE_URL")
    for client in deployment.clients:
        env[f"DATABASE_URL_{client.upper()}"] = deployment.url(client)
    argv = [str(VENV_BIN / "reactive"), "listen", "--client", "alpha", "--client", "beta", "--wait", "1"]
    supervisor = subprocess.Popen(argv, env=env, cwd=ROOT, start_new_session=True)
    try:
        for client in deployment.clients:
            eventually(lambda c=client: count_users(deployment, c) == 5, timeout=60, what=f"{client} applied")
    finally:
        os.killpg(supervisor.pid, signal.SIGTERM)
        assert supervisor.wait(timeout=20) == 0


def test_manage_py_listener_is_an_alias(deployment: Deployment) -> None:
    publish_inserts(deployment.base_env["REACTIVE_PREFIX"], 3)
    deployment.run("alpha", [sys.executable, "client_site/manage.py", "listener", "--once"], timeout=60)
    assert count_users(deployment, "alpha") == 3
    assert count_users(deployment, "beta") == 0
