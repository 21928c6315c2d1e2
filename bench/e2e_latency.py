"""Master save commit -> websocket frame in a connected client, every component its own process.

Processes: moto's server (AWS), Redis, the master's Celery worker (outbox relay), `reactive listen --client
alpha`, uvicorn serving client_site. This process plays the master's web process (it saves the user) and the
browser (it holds a websocket to /ws/<username>). BENCH_CHANGES (default 200) first-name changes, one at a
time (latency, not throughput), each timed from its commit (an on_commit hook registered before the save,
so it runs first) to the frame that carries it. The replica's own commit time (ReplicaState.updated_at on
alpha) splits each change into the sync pipeline and the notification.

Baseline from the same run: the last hop alone, a group_send from this process to the user's personal
group -> the same websocket frame.

The master's database is a SQLite file, or, with BENCH_POSTGRES_URL (postgres://USER@HOST:PORT/DB, a
server this bench may create and drop a database on), a PostgreSQL database of its own for this run.

Run: .venv/bin/python bench/e2e_latency.py
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import ROOT, free_port, machine, markdown_table, percentile, start_moto, write_section

from reactive.up import WS_OPTIONS

CHANGES = int(os.environ.get("BENCH_CHANGES", "200"))
WARM_UP = 5
VENV_BIN = Path(sys.executable).parent
USERNAME = "latency"
AWS_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

LOCAL_PK = f"""
from django.contrib.auth import get_user_model
print(get_user_model().objects.filter(username={USERNAME!r}).values_list("pk", flat=True).first() or "")
"""
SESSION = f"""
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
client = Client()
client.force_login(get_user_model().objects.get(username={USERNAME!r}))
print(client.cookies[settings.SESSION_COOKIE_NAME].value)
"""


def load_note() -> str:
    """The machine is shared: say how busy it was, so that figures are read with that in mind."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) when the run ended"


class Frames:
    """A websocket to /ws/<username> in a thread of its own; frames queue up with their arrival time."""

    def __init__(self, url: str, cookie: str, origin: str) -> None:
        self.frames: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.headers = {"Origin": origin, "Cookie": f"sessionid={cookie}"}
        self.url = url
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        import websockets

        async with websockets.connect(self.url, additional_headers=self.headers) as ws:
            while not self.stop.is_set():
                try:
                    frame = await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    continue
                except websockets.ConnectionClosed:
                    return
                self.frames.put((time.perf_counter(), json.loads(frame)))

    def wait_for(self, first_name: str, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while True:
            arrived, frame = self.frames.get(timeout=max(0.01, deadline - time.monotonic()))
            if frame.get("profile", {}).get("first_name") == first_name:
                return arrived

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "")


def site_env(site: str, workdir: Path, shared: dict[str, str], master_url: str = "") -> dict[str, str]:
    env = {**os.environ, **shared, "DATABASE_URL": f"sqlite:///{workdir / (site + '.sqlite3')}"}
    if master_url and site == "master":
        env["DATABASE_URL"] = master_url
    if site == "master":
        env["DJANGO_SETTINGS_MODULE"] = "master_site.settings"
    else:
        env.update(DJANGO_SETTINGS_MODULE="client_site.settings", REACTIVE_CLIENT=site)
    return env


def python_in(env: dict[str, str], code: str) -> str:
    argv = [sys.executable, "-c", "import django\ndjango.setup()\n" + code]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)  # polling a subprocess under a deadline
    raise RuntimeError(f"{what}: not within {timeout} s")


class Replica:
    """Reads alpha's SQLite file directly: when did the listener apply the user's latest version?"""

    def __init__(self, path: Path, key: str) -> None:
        self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        self.key = key

    def applied_at(self) -> float:
        query = "SELECT updated_at FROM reactive_replicastate WHERE model = 'auth.user' AND key = ?"
        (value,) = self.connection.execute(query, (self.key,)).fetchone()
        return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()  # Django stores UTC, naive


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="reactive-latency-"))
    moto, _ = start_moto()
    shared = {
        "REACTIVE_PREFIX": f"lat{uuid.uuid4().hex[:8]}",
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14"),
        "REACTIVE_VAR_DIR": str(workdir),
        "REACTIVE_SSO_KEY": "bench-sso-key-0123456789abcdefghijklm",
        "REACTIVE_TRANSPORT": "sqs",
        "REACTIVE_LOG_LEVEL": "WARNING",
        **{name: os.environ[name] for name in AWS_VARIABLES},
    }
    master_url = postgres_database(shared["REACTIVE_PREFIX"], create=True) if POSTGRES_URL else ""
    master_env = site_env("master", workdir, shared, master_url)
    alpha_env = site_env("alpha", workdir, shared)
    processes: list[subprocess.Popen[bytes]] = [moto]
    log = open(workdir / "processes.log", "ab")  # noqa: SIM115 - closed at the end

    def start(argv: list[str], env: dict[str, str]) -> None:
        processes.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))

    try:
        provision = [str(VENV_BIN / "reactive"), "provision", "--client", "alpha"]
        subprocess.run(provision, env=master_env, cwd=ROOT, check=True, capture_output=True)
        for env in (master_env, alpha_env):
            migrate = [sys.executable, "-m", "django", "migrate", "--noinput"]
            subprocess.run(migrate, env=env, cwd=ROOT, check=True, capture_output=True)
        port = free_port()
        start(
            [str(VENV_BIN / "celery"), "-A", "master_site", "worker", "--pool", "solo", "-l", "warning"],
            master_env,
        )
        start([str(VENV_BIN / "reactive"), "listen", "--client", "alpha"], alpha_env)
        uvicorn = [str(VENV_BIN / "uvicorn"), "client_site.asgi:application", "--port", str(port)]
        start([*uvicorn, "--log-level", "warning", "--no-access-log", *WS_OPTIONS], alpha_env)
        results = measure(master_env, alpha_env, workdir, port)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
        if master_url:
            postgres_database(shared["REACTIVE_PREFIX"], create=False)
    report(*results)


def postgres_database(prefix: str, *, create: bool) -> str:
    """Create (or drop) the master's database of this run on BENCH_POSTGRES_URL's server; its URL."""
    import psycopg

    name = f"{prefix}_master"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        if create:
            admin.execute(f'CREATE DATABASE "{name}"')
        else:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"


def measure(
    master_env: dict[str, str], alpha_env: dict[str, str], workdir: Path, port: int
) -> tuple[list[float], list[float], list[float], list[float]]:
    os.environ.update(master_env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import transaction

    user = get_user_model().objects.create_user(USERNAME, first_name="start")
    local_pk = wait_until(lambda: python_in(alpha_env, LOCAL_PK), 60, "the user reaches alpha")
    base = f"127.0.0.1:{port}"
    frames = Frames(f"ws://{base}/ws/{USERNAME}", python_in(alpha_env, SESSION), f"http://{base}")
    frames.wait_for("start")
    replica = Replica(workdir / "alpha.sqlite3", str(user.pk))

    def change(first_name: str) -> tuple[float, float, float]:
        """(commit wall time, commit perf time, frame perf time) of one change."""
        committed: list[tuple[float, float]] = []
        with transaction.atomic():
            transaction.on_commit(lambda: committed.append((time.time(), time.perf_counter())))
            user.first_name = first_name
            user.save()
        return committed[0][0], committed[0][1], frames.wait_for(first_name)

    for i in range(WARM_UP):  # first relay, first receive, connections: not measured
        change(f"warm{i}")
    whole, sync, notify = [], [], []
    for i in range(CHANGES):
        wall, commit, arrived = change(f"m{i}-{uuid.uuid4().hex[:4]}")
        applied = replica.applied_at()
        whole.append((arrived - commit) * 1000)
        sync.append((applied - wall) * 1000)
        notify.append(whole[-1] - sync[-1])
    hop = last_hop(master_env["REACTIVE_PREFIX"], local_pk, master_env["REDIS_URL"], frames)
    frames.close()
    return whole, sync, notify, hop


def last_hop(prefix: str, local_pk: str, redis_url: str, frames: Frames) -> list[float]:
    """group_send to the personal group from this process -> the frame: the websocket hop alone."""
    from channels_redis.core import RedisChannelLayer

    from reactive.groups import USER_CHANGED, user_group

    layer = RedisChannelLayer(hosts=[redis_url], prefix=f"{prefix}-alpha")
    timings = []

    async def run_all() -> None:
        for i in range(CHANGES):
            started = time.perf_counter()
            message = {"type": USER_CHANGED, "profile": {"first_name": f"hop{i}"}}
            await layer.group_send(user_group(local_pk), message)
            arrived = await asyncio.to_thread(frames.wait_for, f"hop{i}")
            timings.append((arrived - started) * 1000)

    asyncio.run(run_all())
    return timings


def report(whole: list[float], sync: list[float], notify: list[float], hop: list[float]) -> None:
    base = percentile(hop, 50)
    paths = [
        ("group_send -> frame (baseline: the last hop)", hop),
        ("master commit -> replica write (sync pipeline)", sync),
        ("replica write -> frame (commit, notify, hop)", notify),
        ("master commit -> frame (whole path)", whole),
    ]
    rows = [
        [
            name,
            len(values),
            f"{percentile(values, 50):.1f}",
            f"{percentile(values, 99):.1f}",
            f"{max(values):.1f}",
        ]
        + [f"{percentile(values, 50) / base:.1f}x"]
        for name, values in paths
    ]
    table = markdown_table(["path", "changes", "p50 ms", "p99 ms", "max ms", "p50 vs baseline"], rows)
    print(table)
    on_postgres = " (master on PostgreSQL)" if POSTGRES_URL else ""
    write_section(  # a section per master database: a run on one leaves the other's figures
        "e2e_latency_postgres" if POSTGRES_URL else "e2e_latency",
        f"## End-to-end latency{on_postgres} (bench/e2e_latency.py)\n\n"
        f"One change at a time, {len(whole)} changes: master save commit -> outbox relay (Celery worker) -> "
        "SNS -> SQS (moto's server) -> `reactive listen` (20 s long poll) -> commit on alpha -> Redis "
        "channel layer -> uvicorn -> websocket frame in the bench process. Every component is its own "
        f"process; {machine()}; {load_note()}. The master's database: {master_database()}. "
        "The replica write is ReplicaState.updated_at, set inside "
        "the listener's transaction (wall clock, same machine).\n\n"
        f"{table}\n\nTargets: p50 at most 30 ms, p99 at most 150 ms (whole path).",
    )


def master_database() -> str:
    if not POSTGRES_URL:
        return "a SQLite file (WAL)"
    import psycopg

    with psycopg.connect(POSTGRES_URL) as db:
        version = db.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {version[0] if version else ''} on this machine (BENCH_POSTGRES_URL)"


if __name__ == "__main__":
    main()
