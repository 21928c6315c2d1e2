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
        "configured": False,
        "unreadable": [],  # with several databases: those that could not be read
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


def run_status(provisioned: dict[str, str], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`reactive status` in its own process, with the given master database settings."""
    full = {**os.environ, **provisioned, "COLUMNS": "200", **env}
    full.pop("DJANGO_SETTINGS_MODULE", None)
    if not env.get("DATABASE_URL"):
        full.pop("DATABASE_URL", None)
    return subprocess.run([REACTIVE, "status", *args], env=full, capture_output=True, text=True, timeout=120)


def test_an_unreadable_master_database_is_shown_and_fails_the_check(provisioned: dict[str, str]) -> None:
    unreachable = "postgres://nobody:secret@127.0.0.1:1/master"
    done = run_status(provisioned, DATABASE_URL=unreachable)
    assert done.returncode == 0, done.stderr  # without --check it only reports
    assert "alpha" in done.stdout and "raw delivery" in done.stdout  # the AWS part is still there
    assert "master outbox: unknown (cannot read the master's outbox" in done.stdout
    assert "! master: cannot read the master's outbox" in done.stdout
    checked = run_status(provisioned, "--check", DATABASE_URL=unreachable)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert json.loads(run_status(provisioned, "--json", DATABASE_URL=unreachable).stdout)["ok"] is False


def test_a_host_with_no_master_database_named_checks_the_aws_side_only(
    provisioned: dict[str, str], tmp_path: Path
) -> None:
    done = run_status(provisioned, "--check", REACTIVE_VAR_DIR=str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "master outbox: unknown (no master database at" in done.stdout
    assert "AWS side all good (the outbox was not checked)" in done.stdout
    assert not list(tmp_path.iterdir())  # looking created no empty database


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
