"""The listener tells browsers about a commit before it acks the messages (the ack is an AWS round trip)."""

from __future__ import annotations

from typing import Any

import pytest

from reactive.errors import ServiceUnavailable
from reactive.events import Event, encode
from reactive.listener import Listener
from reactive.transport.base import OutgoingMessage

pytestmark = pytest.mark.django_db


def published(memory: Any, first_name: str) -> None:
    event = Event(
        model="auth.user",
        action="insert",
        key="1",
        version=1,
        data={"username": "ann", "first_name": first_name},
    )
    memory.publish([OutgoingMessage(id="1", body=encode(event))])


def test_browsers_hear_of_a_commit_before_the_ack(memory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    original = memory.delete

    def delete(queue: str, receipts: list[str]) -> Any:
        steps.append("ack")
        return original(queue, receipts)

    monkeypatch.setattr(memory, "delete", delete)
    listener = Listener("alpha", memory, wait=0, notify=lambda changes: steps.append("notify"))
    published(memory, "Ann")
    listener.run(once=True)
    assert steps == ["notify", "ack"]


def test_a_failing_ack_does_not_hide_the_commit_from_browsers(
    memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    notified: list[str] = []

    def delete(queue: str, receipts: list[str]) -> Any:
        raise ServiceUnavailable("SQS is unreachable")

    monkeypatch.setattr(memory, "delete", delete)
    listener = Listener(
        "alpha", memory, wait=0, notify=lambda changes: notified.extend(p["first_name"] for _, p in changes)
    )
    published(memory, "Ann")
    with pytest.raises(ServiceUnavailable):
        listener.process(memory.receive(listener.queue, max_messages=10, wait_seconds=0))
    assert notified == ["Ann"]  # committed, so shown; the message comes back and is skipped as stale
