"""`reactive status` through Typer's CliRunner against moto's server (and a process with no master DB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from typer.testing import CliRunner

from cli.main import app
from reactive.transport.sqs import SqsTransport
from tests.test_dlq import put
from tests.test_status import outbox_row

runner = CliRunner()
REACTIVE = str(Path(sys.executable).parent / "reactive")
pytestmark = pytest.mark.django_db


def test_json_lists_each_client_and_the_outbox(sqs: SqsTransport) -> None:
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [c["client"] for c in report["clients"]] == ["alpha", "beta"]
    alpha = report["clients"][0]
    assert alpha["queue_depth"] == {"visible": 0, "in_flight": 0, "delayed": 0}
    assert alpha["subscription"]["present"] and alpha["subscription"]["raw_delivery"]
    assert report["outbox"] == {
        "available": True,
        "pending": 0,
        "oldest_age_seconds": None,
        "detail": "",
        "failing": 0,
        "last_error": "",
    }
    assert report["ok"] is True


def test_check_exits_1_on_dead_letters(sqs: SqsTransport) -> None:
    assert runner.invoke(app, ["status", "--check"]).exit_code == 0
    put(sqs, f"{sqs.topic_name.removesuffix('-users')}-beta-dlq", "poison")
    result = runner.invoke(app, ["status", "--check"], env={"COLUMNS": "160"})
    assert result.exit_code == 1
    assert "beta: 1 message(s) in the DLQ" in result.stdout
    assert runner.invoke(app, ["status"]).exit_code == 0  # without --check it only reports


def test_check_exits_1_on_an_old_outbox_backlog(sqs: SqsTransport) -> None:
    outbox_row(occurred_at=timezone.now() - timedelta(hours=1))
    relaxed = runner.invoke(app, ["status", "--check", "--max-age", "7200"])
    assert relaxed.exit_code == 0, relaxed.output
    strict = runner.invoke(app, ["status", "--check", "--max-age", "60"], env={"COLUMNS": "160"})
    assert strict.exit_code == 1
    assert "master outbox: 1 pending, oldest 3600 s old" in strict.stdout or "oldest 360" in strict.stdout
    assert "oldest pending outbox row" in strict.stdout


def test_the_aws_part_is_shown_when_the_master_database_is_unreachable(provisioned: dict[str, str]) -> None:
    env = {
        **os.environ,
        **provisioned,
        "DATABASE_URL": "postgres://nobody:secret@127.0.0.1:1/master",
        "COLUMNS": "200",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run([REACTIVE, "status"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "alpha" in done.stdout and "raw delivery" in done.stdout
    assert "master outbox: unknown (cannot read the master's outbox" in done.stdout
    assert "AWS side all good" in done.stdout


def test_the_outbox_line_says_how_many_rows_fail_and_why() -> None:
    from rich.console import Console

    from cli.status import _outbox_line
    from reactive.status import OutboxStatus

    line = _outbox_line(
        OutboxStatus(True, pending=3, oldest_age_seconds=42, failing=1, last_error="Bad [entry]")
    )
    console = Console(width=200, record=True)
    console.print(line)
    assert (
        console.export_text().strip()
        == "master outbox: 3 pending, oldest 42 s old, 1 failing (last error: Bad [entry])"
    )
