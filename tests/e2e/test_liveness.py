"""Liveness across process boundaries, with a process that is running but stuck (SIGSTOP: its pid and its
port stay, nothing it runs moves). A web process then fails /live while the kernel still accepts on its
port (all the old tcpSocket probe saw), and /live answers through a database and Redis outage; a listener
group with one stuck child, or a stuck beat, lets the heartbeat file the probe reads go stale."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests.support.services import eventually, free_port, port_open
from tests.support.sites import ROOT, VENV_BIN, Deployment

pytestmark = pytest.mark.e2e
PROBE_AGE = 3  # seconds: the loops below go round every second or so


def get(url: str, timeout: float = 2) -> tuple[int | None, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
    except OSError:  # refused, reset, or no answer within the timeout
        return None, b""


@contextmanager
def stuck(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def probe(path: Path) -> int:
    """The liveness probe of the manifests, with a short max age."""
    env = {**os.environ, "REACTIVE_HEARTBEAT_FILE": str(path), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "reactive.heartbeat", "--max-age", str(PROBE_AGE)]
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as output:
        return subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.parametrize("site", ["master", "alpha"])
def test_live_answers_through_an_outage_and_fails_when_the_loop_is_stuck(site: str, tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    module = "master_site" if site == "master" else "client_site"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REACTIVE_", "DATABASE_URL"))},
        "DJANGO_SETTINGS_MODULE": f"{module}.settings",
        "REACTIVE_CLIENT": "alpha",
        "REACTIVE_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"postgres://reactive:x@127.0.0.1:{closed}/{site}",  # nothing listens there
        "REDIS_URL": f"redis://127.0.0.1:{closed}/0",
    }
    argv = [
        str(VENV_BIN / "uvicorn"),
        f"{module}.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = start([*argv, "--lifespan", "off", "--no-access-log"], env, tmp_path / "uvicorn.log")
    base = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: get(base + "/live")[0] == 200, timeout=30, what=f"{site} answers /live")
        assert json.loads(get(base + "/live")[1]) == {"ok": True}
        status, body = get(base + "/health", timeout=10)
        assert status == 503 and set(json.loads(body)["failed"]) == {"database", "redis"}  # not ready, alive
        with stuck(server.pid):
            assert port_open(port), "the kernel no longer accepts: the test shows nothing"
            assert get(base + "/live")[0] is None  # what the kubelet now sees: no answer, a failed probe
        eventually(lambda: get(base + "/live")[0] == 200, timeout=10, what=f"{site} answers /live again")
    finally:
        stop(server)
    assert "Traceback" not in (tmp_path / "uvicorn.log").read_text()


def test_one_stuck_listener_makes_the_groups_heartbeat_stale(deployment: Deployment, tmp_path: Path) -> None:
    """`reactive listen --client alpha --client beta`: one file for the probe, fresh while both children go
    round, stale while one is stuck although the supervisor and the other child go on."""
    target = tmp_path / "listener.alive"
    extra = {
        "REACTIVE_HEARTBEAT_FILE": str(target),
        "DATABASE_URL_ALPHA": deployment.url("alpha"),
        "DATABASE_URL_BETA": deployment.url("beta"),
    }
    argv = [str(VENV_BIN / "reactive"), "listen", "--client", "alpha", "--client", "beta", "--wait", "1"]
    parent = deployment.start("alpha", argv, "listen-group", **extra)
    eventually(lambda: probe(target) == 0, timeout=60, what="the group's heartbeat")

    def children_by_client() -> dict[str, int]:
        """The running children, by client (one that failed its start, AWS slow to answer on a loaded
        machine, is back after the supervisor's backoff; one mid-exec has no command line yet)."""
        found = {}
        for child in psutil.Process(parent.pid).children():
            with contextlib.suppress(psutil.Error):
                command = child.cmdline()
                if "--client" in command:
                    found[command[command.index("--client") + 1]] = child.pid
        return found

    eventually(lambda: set(children_by_client()) == {"alpha", "beta"}, timeout=30, what="both children")
    children = children_by_client()
    beta = Path(f"{target}.beta")
    with stuck(children["alpha"]):
        eventually(lambda: probe(target) == 1, timeout=15, what="a stale heartbeat with alpha stuck")
        assert probe(beta) == 0 and parent.poll() is None  # beta and the supervisor still go round
    eventually(lambda: probe(target) == 0, timeout=15, what="a fresh heartbeat once alpha goes on")
    assert "Traceback" not in deployment.log("listen-group")


def test_a_stuck_beat_lets_its_heartbeat_go_stale(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "beat.alive"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REACTIVE_", "DATABASE_URL"))},
        "REDIS_URL": redis_url,
        "REACTIVE_PREFIX": f"t{uuid.uuid4().hex[:10]}",
        "REACTIVE_VAR_DIR": str(tmp_path),
        "REACTIVE_HEARTBEAT_FILE": str(path),
    }
    argv = [str(VENV_BIN / "reactive"), "beat", "--client", "alpha", "--interval", "0.2"]
    beat = start(argv, env, tmp_path / "beat.log")
    try:
        eventually(lambda: probe(path) == 0, timeout=30, what="the beat's heartbeat")
        with stuck(beat.pid):
            eventually(lambda: probe(path) == 1, timeout=15, what="a stale heartbeat with the beat stuck")
        eventually(lambda: probe(path) == 0, timeout=15, what="a fresh heartbeat once the beat goes on")
    finally:
        stop(beat)
    assert beat.returncode == 0, (tmp_path / "beat.log").read_text()
