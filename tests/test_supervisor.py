"""The supervisor under `reactive up` and `reactive listen --client a --client b`: a child that dies is
restarted with growing delays and reported; a stop ends every child, its own children included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from reactive.supervisor import Child, ProcessSpec, Supervisor
from tests.support.services import eventually

ROOT = Path(__file__).resolve().parent.parent
DIES = [sys.executable, "-c", "import sys; print('dying'); sys.exit(3)"]
# A child that starts a grandchild in its own process group, as uvicorn and celery start workers.
FAMILY = [sys.executable, "-c", "import signal, subprocess, sys; subprocess.Popen([sys.executable, '-c', "
          "'import signal; signal.pause()']); signal.pause()"]  # fmt: skip


@pytest.fixture(autouse=True)
def _keep_pytest_signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_dying_child_is_restarted_with_backoff_and_a_stop_leaves_nothing(tmp_path: Path) -> None:
    changes: list[tuple[str, str, int]] = []
    backoffs: list[float] = []  # each delay as the supervisor chose it (not as wall-clock gaps show it)

    def record(child: Child) -> None:
        changes.append((child.spec.name, child.state, child.restarts))
        if child.state == "backoff":
            backoffs.append(child.next_start - time.monotonic())

    supervisor = Supervisor(
        [ProcessSpec("dies", DIES, log_path=tmp_path / "dies.log"), ProcessSpec("family", FAMILY)],
        on_change=record,
    )
    dies, family = supervisor.children
    deadline = time.monotonic() + 30
    restarted_at: list[float] = []
    descendants: list[psutil.Process] = []

    def tick() -> None:
        if dies.state == "running" and dies.restarts > len(restarted_at):
            restarted_at.append(time.monotonic())
        if family.pid and not descendants:
            descendants.extend(psutil.Process(family.pid).children(recursive=True))
        if len(restarted_at) >= 3 or time.monotonic() > deadline:
            supervisor.stop()

    assert supervisor.run(tick=tick) == 0
    assert len(restarted_at) >= 3, f"restarted {len(restarted_at)} times in 30 s"
    assert [round(delay, 1) for delay in backoffs[:3]] == [0.5, 1.0, 2.0], backoffs  # doubling each time
    assert ("dies", "backoff", 0) in changes and ("dies", "running", 1) in changes
    assert (tmp_path / "dies.log").read_text().count("dying") >= 3, "the log is appended across restarts"
    assert family.state == "stopped" and descendants, "the grandchild was never seen"
    assert family.process is not None and family.process.returncode is not None, "the child was not reaped"
    _, still = psutil.wait_procs(descendants, timeout=5)  # a killed process may take a moment to be gone
    alive = [p.pid for p in still if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"the stop left the child's own children running: {alive}"


def test_restarts_keep_no_log_file_open_in_the_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child writes its own copy of the log's descriptor: the supervisor's is closed once it started.
    It was kept until the stop, one more per restart: a child crashing every 30 s ran the supervisor
    (and everything under `reactive up`) out of file descriptors within a day."""
    import reactive.supervisor

    monkeypatch.setattr(reactive.supervisor, "MAX_BACKOFF", 0.0)  # restarts as fast as they die
    log = tmp_path / "dies.log"
    supervisor = Supervisor([ProcessSpec("dies", DIES, log_path=log)])
    me = psutil.Process()
    open_logs: list[int] = []

    def tick() -> None:
        open_logs.append(sum(1 for f in me.open_files() if f.path == str(log)))
        if supervisor.children[0].restarts >= 5:
            supervisor.stop()

    supervisor.run(tick=tick)
    assert supervisor.children[0].restarts >= 5
    assert max(open_logs) == 0, f"the supervisor held the log open {max(open_logs)} times over"
    assert log.read_text().count("dying") >= 5


def test_each_listener_gets_its_own_database_and_a_shared_one_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reactive.errors import ConfigError
    from reactive.supervisor import listener_spec

    for variable in ("DATABASE_URL_MY_APP", "DATABASE_URL_BETA"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgres://db/shared")
    with pytest.raises(ConfigError, match="put {client} in it, or set DATABASE_URL_MY_APP"):
        listener_spec("my-app")
    monkeypatch.setenv("DATABASE_URL_MY_APP", "postgres://db/my_app")  # '-' is '_' in a variable name
    assert listener_spec("my-app").env["DATABASE_URL"] == "postgres://db/my_app"
    monkeypatch.setenv("DATABASE_URL", "postgres://db/{client}")
    assert listener_spec("beta").env["DATABASE_URL"] == "postgres://db/beta"


def test_a_supervised_listener_reads_its_own_database_beside_other_clients_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """alpha on var/'s SQLite, beta on its own DATABASE_URL_BETA (as the README shows): alpha's child got
    a plain DATABASE_URL beside DATABASE_URL_BETA, which its settings took for another site's and refused."""
    from reactive import settings
    from reactive.supervisor import listener_spec

    for template in (None, "postgres://db/{client}"):
        for name in [n for n in os.environ if n.startswith("DATABASE_URL")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("REACTIVE_VAR_DIR", str(tmp_path))
        monkeypatch.setenv("DATABASE_URL_BETA", "postgres://db/beta-own")
        if template:
            monkeypatch.setenv("DATABASE_URL", template)
        wanted = settings.database_url("client", "alpha")
        for name, value in listener_spec("alpha").env.items():  # what the child starts with
            monkeypatch.setenv(name, value)
        assert settings.database_url("client", "alpha") == wanted
        assert settings.database_url("client", "beta") == "postgres://db/beta-own"


SUPERVISES_A_SLEEPER = """
import sys
from reactive.supervisor import ProcessSpec, Supervisor

supervisor = Supervisor([ProcessSpec("sleeper", [sys.executable, "-c", "import signal; signal.pause()"])])
said = []

def tick():
    child = supervisor.children[0]
    if child.pid and child.state == "running" and not said:
        said.append(child.pid)
        print(child.pid, flush=True)

supervisor.run(tick=tick)
"""


def test_children_die_with_a_supervisor_killed_by_sigkill() -> None:
    """SIGKILL leaves a supervisor no moment to stop its children: Linux stops them (PR_SET_PDEATHSIG)."""
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISES_A_SLEEPER], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert supervisor.stdout is not None
        child = psutil.Process(int(supervisor.stdout.readline()))
        # The command itself in the end, not a wrapper around it: the guard execs it (while it does, the
        # process's command line reads empty, then the guard's, for a moment).
        eventually(
            lambda: child.cmdline()[:2] == [sys.executable, "-c"],
            timeout=10,
            what="the guard replaced by the command",
        )
        assert child.cmdline()[2] == "import signal; signal.pause()"
        supervisor.kill()
        supervisor.wait(5)
        _, alive = psutil.wait_procs([child], timeout=5)
        assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        supervisor.kill()


EXITS = [sys.executable, "-c", "print('a line that may hold a login link')"]


def test_child_logs_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """Children's output (login links, addresses, tracebacks) went to files the umask left readable to all."""
    fresh = tmp_path / "logs" / "fresh.log"
    earlier = tmp_path / "logs" / "earlier.log"
    earlier.parent.mkdir()
    earlier.write_text("from a version that made it 0644\n")
    earlier.chmod(0o644)
    supervisor = Supervisor(
        [ProcessSpec("fresh", EXITS, log_path=fresh), ProcessSpec("old", EXITS, log_path=earlier)]
    )
    assert supervisor.run(restart=False) == 0
    for log in (fresh, earlier):
        assert "a line that may hold a login link" in log.read_text()
        assert oct(log.stat().st_mode & 0o777) == oct(0o600), log
    assert earlier.read_text().startswith("from a version"), "the log is appended to, not replaced"
