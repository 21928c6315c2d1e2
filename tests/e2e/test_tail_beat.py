"""`reactive tail` and `reactive beat` as real processes on Redis; the client's Celery beat runs the tick."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.support.services import eventually, free_port
from tests.support.sites import ROOT, VENV_BIN, Deployment

pytestmark = pytest.mark.e2e
REACTIVE = str(VENV_BIN / "reactive")


@pytest.fixture(scope="module")
def alpha(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Only client alpha, migrated once for this module; Redis and a prefix of its own (no AWS here)."""
    env = {"REDIS_URL": redis_url, "REACTIVE_PREFIX": f"t{uuid.uuid4().hex[:10]}"}
    system = Deployment(workdir=tmp_path_factory.mktemp("tail-beat"), base_env=env, clients=("alpha",))
    system.run("alpha", [sys.executable, "-m", "django", "migrate", "--noinput"])
    yield system
    system.stop_all()


@pytest.fixture(autouse=True)
def _stop_processes(alpha: Deployment) -> Iterator[None]:
    yield
    alpha.stop_all()


class Tail:
    """A running `reactive tail --json`, its stdout and stderr kept apart."""

    def __init__(self, system: Deployment, *args: str) -> None:
        name = uuid.uuid4().hex[:8]
        self.out, self.err = system.workdir / f"tail-{name}.out", system.workdir / f"tail-{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(  # a session of its own: the deployment's stop signals its group
                [REACTIVE, "tail", *args, "--json"],
                env=system.env("alpha"),
                cwd=ROOT,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        system.processes.append(self.process)
        eventually(lambda: "following" in self.err.read_text(), timeout=30, what="tail joined its groups")

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(15)


def test_tail_prints_each_tick_beat_sends_and_ctrl_c_exits_0(alpha: Deployment) -> None:
    tail = Tail(alpha, "clock")
    sent = [json.loads(alpha.run("alpha", [REACTIVE, "beat", "--once", "--json"])) for _ in range(3)]
    eventually(lambda: len(tail.lines()) == 3, timeout=20, what="3 ticks tailed")
    lines = tail.lines()
    assert [line["payload"] for line in lines] == sent
    assert {(line["group"], line["type"]) for line in lines} == {("clock", "clock.tick")}
    assert tail.interrupt() == 0
    assert "Traceback" not in tail.err.read_text()


def test_celery_beat_ticks_twice_a_second(alpha: Deployment) -> None:
    tail = Tail(alpha, "clock")
    celery = [
        str(VENV_BIN / "celery"),
        "-A",
        "client_site",
        "worker",
        "--beat",
        "--pool",
        "solo",
        "-l",
        "warning",
    ]
    alpha.start("alpha", [*celery, "--schedule", str(alpha.workdir / "beat-schedule")], "celery-alpha")
    eventually(lambda: len(tail.lines()) >= 8, timeout=60, what="8 ticks from Celery beat")
    # Each tick newer than the one before (the schedule's 0.5 s is test_clock's business: gaps between
    # ticks measure the worker's delays on a loaded machine as much as the schedule).
    times = [datetime.fromisoformat(line["payload"]["iso"]) for line in tail.lines()[-6:]]
    assert times == sorted(set(times)), times
    assert tail.interrupt() == 0


def test_tail_user_follows_a_personal_group(alpha: Deployment) -> None:
    pk = alpha.python(
        "alpha",
        """
        from django.contrib.auth import get_user_model
        print(get_user_model().objects.create(username="a.b+c@example.com", first_name="Ann").pk)
        """,
    ).strip()
    tail = Tail(alpha, "--user", "a.b+c@example.com")
    alpha.python(
        "alpha", f"from reactive import groups; groups.notify_profiles([({pk!r}, {{'version': 7}})])"
    )
    eventually(lambda: tail.lines(), timeout=20, what="the personal group's message")
    assert tail.lines() == [
        {
            "at": tail.lines()[0]["at"],
            "group": f"user.{pk}",
            "type": "user.changed",
            "payload": {"profile": {"version": 7}},
        }
    ]
    assert tail.interrupt() == 0


@pytest.mark.parametrize(
    ("argv", "env", "code", "message"),
    [
        (["tail", "not a group!"], {}, 2, "invalid group name"),
        (["tail", "--user", "nobody", "clock"], {}, 1, "no user 'nobody'"),
        (["tail", "clock"], {"REDIS_URL": "redis://127.0.0.1:{port}/0"}, 3, "cannot reach Redis"),
        (["beat", "--once"], {"REDIS_URL": "redis://127.0.0.1:{port}/0"}, 3, "cannot reach Redis"),
    ],
    ids=["bad-group", "unknown-user", "tail-no-redis", "beat-no-redis"],
)
def test_errors_are_one_line_with_the_right_exit_code(
    alpha: Deployment, argv: list[str], env: dict[str, str], code: int, message: str
) -> None:
    extra = {name: value.format(port=free_port()) for name, value in env.items()}
    done = subprocess.run(
        [REACTIVE, *argv],
        env={**alpha.env("alpha"), **extra},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and os.linesep not in done.stderr.strip()
