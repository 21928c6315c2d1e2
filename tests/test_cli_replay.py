"""`reactive replay-dlq` through Typer's CliRunner against moto's server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from reactive.dlq import Pacer
from reactive.transport.sqs import SqsTransport
from tests.test_dlq import ATTRIBUTES, POISON, put, take_all, total

runner = CliRunner()


def names(sqs: SqsTransport) -> tuple[str, str]:
    prefix = sqs.topic_name.removesuffix("-users")
    return f"{prefix}-alpha", f"{prefix}-alpha-dlq"


def test_replay_moves_everything_back_and_prints_a_summary(sqs: SqsTransport) -> None:
    queue, dlq = names(sqs)
    for body in POISON:
        put(sqs, dlq, body, ATTRIBUTES)
    result = runner.invoke(app, ["replay-dlq", "--client", "alpha", "--yes"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "moved" in result.stdout and "left in DLQ" in result.stdout
    row = [line for line in result.stdout.splitlines() if "│" in line][-1]
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == ["3", "0", "0"]
    moved = take_all(sqs, queue)
    assert sorted(m.body for m in moved) == sorted(POISON)
    assert all(dict(m.raw_message_attributes) == ATTRIBUTES for m in moved)
    assert total(sqs, dlq) == 0


def test_replay_asks_first_and_dry_run_moves_nothing(sqs: SqsTransport) -> None:
    queue, dlq = names(sqs)
    message_id = put(sqs, dlq, "precious")
    refused = runner.invoke(app, ["replay-dlq", "--client", "alpha"], input="n\n")
    assert refused.exit_code == 1 and "Move 1 message(s)" in refused.output
    dry = runner.invoke(app, ["replay-dlq", "--client", "alpha", "--dry-run"], env={"COLUMNS": "160"})
    assert dry.exit_code == 0, dry.output
    assert "would move 1 message(s)" in dry.stdout and "not decodable" in dry.stdout
    assert message_id[:8] in dry.stdout and message_id not in dry.stdout  # the id `dlq list` shows
    assert (total(sqs, queue), total(sqs, dlq)) == (0, 1)


def test_replay_asks_even_when_the_count_says_nothing_is_there_and_json_stays_json(
    sqs: SqsTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DLQ's count lags on AWS: a replay that skipped the question when it read 0 moved what was there
    unasked. The question goes to stderr, so that --json's stdout is JSON."""
    from reactive.transport.base import QueueDepth

    queue, dlq = names(sqs)
    put(sqs, dlq, "precious")
    with monkeypatch.context() as lagging:
        lagging.setattr(SqsTransport, "depth", lambda self, queue: QueueDepth(0, 0, 0))
        refused = runner.invoke(app, ["replay-dlq", "--client", "alpha"], input="n\n")
    assert refused.exit_code == 1 and "reports none visible now" in refused.stderr
    assert (total(sqs, queue), total(sqs, dlq)) == (0, 1)
    with monkeypatch.context() as lagging:
        lagging.setattr(SqsTransport, "depth", lambda self, queue: QueueDepth(0, 0, 0))
        agreed = runner.invoke(app, ["replay-dlq", "--client", "alpha", "--json"], input="y\n")
    assert agreed.exit_code == 0, agreed.output
    # CliRunner echoes the typed answer into stdout, as a terminal would show it: the JSON is the rest
    echoed, printed = agreed.stdout.split("\n", 1)
    assert echoed.strip() == "y" and json.loads(printed)["moved"] == 1
    assert "Move the messages" in agreed.stderr


def test_replay_json_limit_and_rate(sqs: SqsTransport) -> None:
    queue, dlq = names(sqs)
    for i in range(4):
        put(sqs, dlq, f"m{i}")
    result = runner.invoke(
        app, ["replay-dlq", "--client", "alpha", "--yes", "--limit", "3", "--rate", "100", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["planned"], summary["moved"], summary["failed"], summary["left"]) == (3, 3, 0, 1)
    assert (total(sqs, queue), total(sqs, dlq)) == (3, 1)


def test_replay_reports_what_it_could_not_move_and_exits_1(sqs: SqsTransport) -> None:
    queue, dlq = names(sqs)
    sqs.sqs.set_queue_attributes(QueueUrl=sqs.queue_url(queue), Attributes={"MaximumMessageSize": "1024"})
    put(sqs, dlq, "x" * 2000)
    result = runner.invoke(app, ["replay-dlq", "--client", "alpha", "--yes"])
    assert result.exit_code == 1
    assert "not moved" in result.stderr and "shorter than 1024" in result.stderr
    assert total(sqs, dlq) == 1


def test_move_task_where_unsupported_names_the_default_mover(sqs: SqsTransport) -> None:
    put(sqs, names(sqs)[1], "m")
    result = runner.invoke(app, ["replay-dlq", "--client", "alpha", "--yes", "--move-task"])
    assert result.exit_code != 0
    assert "does not support StartMessageMoveTask" in str(result.exception)
    assert "replay-dlq without --move-task" in str(result.exception)


def test_the_pacer_holds_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a clock of the test's own: the waits the pacer asks for, not how long a loaded machine took."""
    import reactive.dlq

    now, slept = [100.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    from types import SimpleNamespace

    monkeypatch.setattr(reactive.dlq, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    pacer = Pacer(20.0)
    pacer.wait(10)  # the first batch goes at once
    assert slept == []
    now[0] += 0.1  # sending it took 0.1 s
    pacer.wait(10)  # the next waits until 10 messages at 20 a second have had their time
    assert slept == [pytest.approx(0.4)]
    pacer.wait(5)
    assert slept[1:] == [pytest.approx(0.5)]


def test_a_move_task_dry_run_starts_nothing(sqs: SqsTransport) -> None:
    put(sqs, names(sqs)[1], "m")
    result = runner.invoke(app, ["replay-dlq", "--client", "alpha", "--move-task", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would start an SQS move task for 1 message(s)" in result.stdout
    assert total(sqs, names(sqs)[1]) == 1


def test_a_move_task_cannot_take_a_limit(sqs: SqsTransport) -> None:
    result = runner.invoke(app, ["replay-dlq", "--client", "alpha", "--move-task", "--limit", "5", "--yes"])
    assert result.exit_code == 2 and "--limit cannot be used with --move-task" in result.stderr
