"""`reactive dlq list/show/purge` through Typer's CliRunner against moto's server."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from cli.main import app
from reactive.errors import UsageError
from reactive.transport.sqs import SqsTransport
from tests.test_dlq import ATTRIBUTES, POISON, put, total

runner = CliRunner()


@pytest.fixture
def dead(sqs: SqsTransport) -> dict[str, str]:
    """alpha's DLQ holding the three kinds of poison: body -> message id."""
    dlq = f"{sqs.topic_name.removesuffix('-users')}-alpha-dlq"
    return {body: put(sqs, dlq, body, ATTRIBUTES) for body in POISON}


def test_list_json_shows_whole_bodies_and_why_without_consuming(
    sqs: SqsTransport, dead: dict[str, str]
) -> None:
    result = runner.invoke(app, ["dlq", "list", "--client", "alpha", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["count"] == 3
    by_body = {m["body"]: m for m in listed["messages"]}
    assert set(by_body) == set(POISON)
    assert by_body["not json at all"]["why"].startswith("not decodable: body is not JSON")
    assert by_body[POISON[1]]["message_id"] == dead[POISON[1]]
    assert by_body[POISON[1]]["message_attributes"]["count"] == {"DataType": "Number", "StringValue": "42"}
    dlq = f"{sqs.topic_name.removesuffix('-users')}-alpha-dlq"
    assert sqs.depth(dlq).visible == 3


def test_list_table_and_limit(sqs: SqsTransport, dead: dict[str, str]) -> None:
    result = runner.invoke(app, ["dlq", "list", "--client", "alpha", "--limit", "2"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "dead letters of alpha (2 of 3)" in result.stdout and "not shown" not in result.stdout
    assert result.stdout.count("not decodable") == 2


def test_show_prints_one_message_whole(sqs: SqsTransport, dead: dict[str, str]) -> None:
    wanted = dead[POISON[1]]
    result = runner.invoke(app, ["dlq", "show", "--client", "alpha", wanted], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert wanted in result.stdout
    assert '"action": "explode"' in result.stdout  # pretty-printed, one key a line
    assert "unknown action 'explode'" in result.stdout
    assert "42 (Number)" in result.stdout
    as_json = json.loads(runner.invoke(app, ["dlq", "show", "--client", "alpha", wanted, "--json"]).stdout)
    assert as_json["body"] == POISON[1]


def test_list_shows_short_ids_that_show_takes(sqs: SqsTransport, dead: dict[str, str]) -> None:
    narrow = runner.invoke(app, ["dlq", "list", "--client", "alpha"], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    for message_id in dead.values():
        assert message_id[:8] in narrow.stdout and message_id not in narrow.stdout
    assert "not decodable: body is not JSON" in narrow.stdout  # the reason has room for its words...
    assert "not json at all" not in narrow.stdout  # ... as the bodies are left to `dlq show` there
    wide = runner.invoke(app, ["dlq", "list", "--client", "alpha"], env={"COLUMNS": "160"})
    assert "not json at all" in wide.stdout
    wanted = dead[POISON[1]]
    shown = runner.invoke(app, ["dlq", "show", "--client", "alpha", wanted[:8]], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert wanted in shown.stdout and "unknown action 'explode'" in shown.stdout


def test_show_refuses_a_prefix_of_several_ids(sqs: SqsTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    from reactive import dlq

    dlq_name = f"{sqs.topic_name.removesuffix('-users')}-alpha-dlq"
    put(sqs, dlq_name, "first")
    put(sqs, dlq_name, "second")
    letters = dlq.inspect(sqs, dlq.queues_of(sqs, "alpha"))
    ids = {letter.message_id: f"abcd{n}-{letter.message_id}" for n, letter in enumerate(letters)}
    renamed = [
        dlq.DeadLetter(replace(x.message, message_id=ids[x.message_id]), x.event, x.error, x.diagnosis)
        for x in letters
    ]
    monkeypatch.setattr(dlq, "inspect", lambda *args, **kwargs: renamed)
    result = runner.invoke(app, ["dlq", "show", "--client", "alpha", "abcd"], env={"COLUMNS": "200"})
    assert isinstance(result.exception, UsageError)  # exit 2 through cli.main.run
    assert "abcd starts 2 message ids" in str(result.exception) and "give more of it" in str(result.exception)
    assert runner.invoke(app, ["dlq", "show", "--client", "alpha", "abcd1"]).exit_code == 0
    blank = runner.invoke(app, ["dlq", "show", "--client", "alpha", "  "])
    assert isinstance(blank.exception, UsageError)


def test_short_ids_grow_until_they_differ() -> None:
    from reactive.dlq import short_ids

    assert short_ids(["0123456789", "abcdefghij"]) == {"0123456789": "01234567", "abcdefghij": "abcdefgh"}
    assert short_ids(["012345678x", "012345678y", "z"]) == {
        "012345678x": "012345678x",
        "012345678y": "012345678y",
        "z": "z",
    }


def test_purge_asks_first_unless_yes(sqs: SqsTransport, dead: dict[str, str]) -> None:
    dlq = f"{sqs.topic_name.removesuffix('-users')}-alpha-dlq"
    refused = runner.invoke(app, ["dlq", "purge", "--client", "alpha"], input="n\n")
    assert refused.exit_code == 1 and "Delete every message" in refused.output
    assert total(sqs, dlq) == 3
    done = runner.invoke(app, ["dlq", "purge", "--client", "alpha", "--yes"])
    assert done.exit_code == 0 and "3 message(s)" in done.stdout
    assert total(sqs, dlq) == 0


@pytest.mark.django_db
def test_list_diagnose_tries_events_against_the_replica(sqs: SqsTransport) -> None:
    from django.contrib.auth import get_user_model

    from tests.test_dlq import event_body

    get_user_model().objects.create_user("carol", is_superuser=True)  # this client's own admin account
    put(
        sqs,
        f"{sqs.topic_name.removesuffix('-users')}-alpha-dlq",
        event_body("insert", "5", 9, username="carol"),
    )
    result = runner.invoke(app, ["dlq", "list", "--client", "alpha", "--diagnose", "--json"])
    assert result.exit_code == 0, result.output
    (message,) = json.loads(result.stdout)["messages"]
    assert "the replica refuses it: username 'carol' is held by a local staff user" in message["why"]


def test_a_fifo_list_says_what_it_could_not_show(sqs: SqsTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQS locks a FIFO message group while its first messages are looked at: a look sees ten of them."""
    from reactive.provision import Options, Provisioner

    monkeypatch.setenv("REACTIVE_FIFO", "1")
    Provisioner(Options(clients=["alpha"], fifo=True, max_receives=2)).run()
    dlq = f"{sqs.topic_name.removesuffix('-users')}-alpha-dlq.fifo"
    for n in range(15):
        put(sqs, dlq, f"poison {n}", MessageGroupId="7", MessageDeduplicationId=str(n))

    result = runner.invoke(app, ["dlq", "list", "--client", "alpha"])

    assert result.exit_code == 0, result.output
    assert "dead letters of alpha (10 of 15)" in result.stdout
    assert "5 more not shown" in result.stdout and "FIFO" in result.stdout
    listed = json.loads(runner.invoke(app, ["dlq", "list", "--client", "alpha", "--json"]).stdout)
    assert (listed["count"], listed["in_dlq"]) == (10, 15)


def test_a_body_that_looks_like_markup_is_listed_as_text(sqs: SqsTransport) -> None:
    dlq = f"{sqs.topic_name.removesuffix('-users')}-alpha-dlq"
    put(sqs, dlq, "[/x] [bold]poison")
    result = runner.invoke(app, ["dlq", "list", "--client", "alpha"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "[/x] [bold]poison" in result.stdout
