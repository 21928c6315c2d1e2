"""Channels waiting to leave their groups until Redis answers (client_site/web/leavers.py): one worker
for all of them, however many sockets closed, and nothing left behind once Redis is back."""

from __future__ import annotations

import asyncio
import logging

import pytest

from client_site.web import leavers
from client_site.web.leavers import Leavers
from tests.support.realtime import until


class Layer:
    """A layer whose discards fail while ``down``; records the calls."""

    def __init__(self) -> None:
        self.down = True
        self.calls: list[tuple[str, str]] = []

    async def group_discard(self, group: str, channel: str) -> None:
        self.calls.append((group, channel))
        if self.down:
            raise ConnectionError("Connection refused")


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leavers, "PAUSES", (0.01, 0.02))


def test_many_closed_sockets_wait_for_one_worker_that_empties_the_queue_once_redis_answers() -> None:
    layer, waiting = Layer(), Leavers()

    async def scenario() -> tuple[int, int, int]:
        for n in range(1000):
            waiting.add(layer, f"user.{n}", f"specific.{n}")
        workers = sum(1 for t in asyncio.all_tasks() if t.get_name() == "leaving groups")
        await until(lambda: len(layer.calls) >= 5, what="a few tries while Redis is away")
        tried_while_down = len(layer.calls)
        layer.down = False
        await until(lambda: not waiting.waiting, what="every channel left")
        return workers, tried_while_down, len(layer.calls)

    workers, tried_while_down, calls = asyncio.run(scenario())
    assert workers == 1
    assert calls == tried_while_down + 1000  # each channel once, once Redis answers; not a retry per channel
    assert set(layer.calls[-1000:]) == {(f"user.{n}", f"specific.{n}") for n in range(1000)}


def test_beyond_the_limit_the_oldest_are_left_to_group_expiry_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(leavers, "MAX_WAITING", 3)
    layer, waiting = Layer(), Leavers()

    async def scenario() -> list[tuple[str, str]]:
        for n in range(5):
            waiting.add(layer, "user.1", f"specific.{n}")
        kept = list(waiting.waiting)
        if waiting.task is not None:
            waiting.task.cancel()
        return kept

    with caplog.at_level(logging.WARNING, logger="reactive.web"):
        kept = asyncio.run(scenario())
    assert kept == [("user.1", "specific.2"), ("user.1", "specific.3"), ("user.1", "specific.4")]
    assert [r.getMessage() for r in caplog.records] == [
        "more than 3 channels wait to leave their groups: the oldest are left to group_expiry"
    ]


def test_a_leave_that_fails_for_another_reason_is_dropped_not_retried_ahead_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer, waiting = Layer(), Leavers()
    layer.down = False
    real = layer.group_discard

    async def discard(group: str, channel: str) -> None:
        if channel == "bad":
            raise ValueError("Group name must be a valid unicode string")
        await real(group, channel)

    layer.group_discard = discard  # type: ignore[method-assign]

    async def scenario() -> None:
        waiting.add(layer, "user.1", "bad")
        waiting.add(layer, "user.1", "good")
        await until(lambda: not waiting.waiting, what="both handled")

    with caplog.at_level(logging.WARNING, logger="reactive.web"):
        asyncio.run(scenario())
    assert layer.calls == [("user.1", "good")]
    assert [r.getMessage() for r in caplog.records] == [
        "bad could not leave user.1: ValueError: Group name must be a valid unicode string"
    ]
