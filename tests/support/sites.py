"""Master and client sites as real processes for end-to-end tests: SQLite files (or PostgreSQL
databases) of their own, migrations, a Celery worker, listeners, and code run inside a site."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@dataclass
class Deployment:
    """One isolated system: a prefix of its own, a database per site, the processes it started."""

    workdir: Path
    base_env: Mapping[str, str]
    clients: tuple[str, ...] = ("alpha", "beta")
    database_urls: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, site: str) -> str:
        return self.database_urls.get(site) or f"sqlite:///{self.workdir / (site + '.sqlite3')}"

    def env(self, site: str, **extra: str) -> dict[str, str]:
        env = {**os.environ, **self.base_env, "REACTIVE_VAR_DIR": str(self.workdir / "var")}
        env.pop("REACTIVE_RELAY", None)
        if site == "master":
            env.update(DJANGO_SETTINGS_MODULE="master_site.settings", DATABASE_URL=self.url("master"))
        else:
            env.update(
                DJANGO_SETTINGS_MODULE="client_site.settings",
                REACTIVE_CLIENT=site,
                DATABASE_URL=self.url(site),
            )
        env.update(extra)
        return env

    def migrate(self) -> None:
        for site in ("master", *self.clients):
            self.run(site, [sys.executable, "-m", "django", "migrate", "--noinput"])

    def run(self, site: str, argv: list[str], timeout: float = 120, **extra: str) -> str:
        done = subprocess.run(
            argv, env=self.env(site, **extra), cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"{argv} in {site} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def python(self, site: str, code: str, timeout: float = 120, **extra: str) -> str:
        """Run code inside a site (Django set up) and return what it printed."""
        script = "import django\ndjango.setup()\n" + textwrap.dedent(code)
        return self.run(site, [sys.executable, "-c", script], timeout=timeout, **extra)

    def sql(self, site: str, query: str) -> int:
        """One number read straight from a site's SQLite file (fast enough to catch a batch in flight)."""
        url = self.url(site)
        assert url.startswith("sqlite:///"), "sql() reads SQLite sites only"
        with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=10) as db:
            return int(db.execute(query).fetchone()[0])

    def start(self, site: str, argv: list[str], log_name: str, **extra: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{log_name}.log", "ab")  # noqa: SIM115 - owned by the process
        process = subprocess.Popen(
            argv,
            env=self.env(site, **extra),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def start_worker(self, **extra: str) -> subprocess.Popen[bytes]:
        argv = [str(VENV_BIN / "celery"), "-A", "master_site", "worker", "--pool", "solo", "-l", "warning"]
        return self.start("master", argv, "worker", **extra)

    def start_listener(self, client: str, *args: str) -> subprocess.Popen[bytes]:
        return self.start(
            client, [str(VENV_BIN / "reactive"), "listen", "--client", client, *args], f"listen-{client}"
        )

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        """SIGTERM to every process, then a wait of up to 15 s for each in turn; one still running after its
        wait is killed, and fails the test: a deployment's processes must stop when asked (Kubernetes and
        compose send SIGTERM too)."""
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:  # not the leader of a group of its own: the process alone
                    process.terminate()
        deaf = []
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                deaf.append(" ".join(map(str, process.args)))
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    process.kill()
                process.wait()
        self.processes.clear()
        assert not deaf, f"still running 15 s after SIGTERM, killed: {deaf}"
