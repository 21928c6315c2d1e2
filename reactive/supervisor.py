"""A small process supervisor: start children, restart the ones that die (with backoff), stop them all.

Used by `reactive listen` with several clients and by `reactive up`. SIGTERM/SIGINT stop every child
(SIGTERM, then SIGKILL after a grace period) and leave nothing running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from reactive import heartbeat, orphans, settings
from reactive.errors import ConfigError

GRACE_SECONDS = 10.0
ChangeCallback = Callable[["Child"], Any]
MAX_BACKOFF = 30.0
LOG_MODE = 0o600  # children's log files: the owner's only


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None
    log_path: Path | None = None


@dataclass
class Child:
    spec: ProcessSpec
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    state: str = "starting"  # starting, running, backoff, exited, stopped
    next_start: float = 0.0
    last_exit: int | None = None
    started_at: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class Supervisor:
    def __init__(self, specs: Sequence[ProcessSpec], *, on_change: ChangeCallback | None = None) -> None:
        self.children = [Child(spec) for spec in specs]
        self.on_change = on_change or (lambda child: None)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            self._stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGHUP, handle)  # a closed terminal stops the children too: nothing is orphaned

    def run(self, *, restart: bool = True, tick: Callable[[], Any] | None = None) -> int:
        """Supervise until stopped (or, without ``restart``, until every child has exited); the exit code."""
        self.install_signal_handlers()
        try:
            for child in self.children:
                if not self._stop.is_set():  # a signal during start-up starts nothing more
                    self._start(child)
            while not self._stop.is_set():
                self.check(restart=restart)
                if tick:
                    tick()
                if not restart and all(c.state == "exited" for c in self.children):
                    break
                self._stop.wait(0.2)
        finally:
            self.shutdown()
        failed = [c for c in self.children if c.last_exit not in (0, None, -signal.SIGTERM)]
        return 1 if failed and not restart else 0

    def check(self, *, restart: bool = True) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.state == "backoff" and now >= child.next_start:
                child.restarts += 1
                self._start(child)
            elif child.process is not None and child.state == "running":
                code = child.process.poll()
                if code is None:
                    continue
                child.last_exit = code
                if restart:
                    # Back off exponentially, but reset once a child has stayed up for a while.
                    uptime = now - child.started_at
                    exponential = min(MAX_BACKOFF, 0.5 * 2 ** min(child.restarts, 6))
                    delay = 0.5 if uptime > MAX_BACKOFF else exponential
                    child.state, child.next_start = "backoff", now + delay
                else:
                    child.state = "exited"
                self.on_change(child)

    def shutdown(self) -> None:
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in running:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.process.wait()
            child.last_exit = child.process.returncode
            # The child is gone; whatever of its group outlived it (an orphaned grandchild that was
            # still handling its SIGTERM) is ended now, so that a stop leaves nothing running.
            _signal_group(child, signal.SIGKILL)
        for child in self.children:
            if child.state != "exited":
                child.state = "stopped"
            self.on_change(child)

    def _start(self, child: Child) -> None:
        spec = child.spec
        output: Any = None
        if spec.log_path:
            output = _open_log(spec.log_path)  # closed below, once the child has its copy
        try:
            child.process = subprocess.Popen(
                orphans.guarded(spec.argv),  # stops when this process dies, even by SIGKILL (Linux)
                env={**os.environ, **spec.env},
                stdin=subprocess.DEVNULL,  # the terminal belongs to the supervisor (and its live view)
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,  # its own process group: stopping it stops its children too
            )
        finally:  # a child restarted every 30 s for a day must not hold 2,880 open files here
            if output is not None:
                output.close()
        child.state, child.started_at = "running", time.monotonic()
        self.on_change(child)


def _open_log(path: Path) -> BinaryIO:
    """A child's log, for appending, readable by its owner only: what children print (addresses, login
    links, tracebacks with values) is not for every account on the machine. The mode is given to open(2),
    not set by os.umask (process-wide: other threads create files meanwhile); a log an earlier version
    left readable to others is narrowed as it is opened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_MODE)
    try:
        # Another account's file, which we may append to but not change, is left as it is.
        with contextlib.suppress(PermissionError):
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, LOG_MODE)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def _signal_group(child: Child, signum: int) -> None:
    if child.process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.process.pid, signum)


def reactive_argv(*args: str) -> list[str]:
    """Run the `reactive` CLI of this very interpreter (works in a venv without PATH)."""
    return [sys.executable, "-m", "cli", *args]


def listener_spec(client: str, *, once: bool = False, batch: int = 10, wait: float = 20) -> ProcessSpec:
    url = settings.database_url("client", client)
    shared = os.environ.get("DATABASE_URL")
    own = settings.client_database_variable(client)
    if shared and "{client}" not in shared and not os.environ.get(own):
        raise ConfigError(f"several clients would share DATABASE_URL: put {{client}} in it, or set {own}")
    argv = reactive_argv("listen", "--client", client, "--batch", str(batch), "--wait", str(wait))
    if once:
        argv.append("--once")
    # Its own variable too, which wins over DATABASE_URL: a child that inherits other clients'
    # DATABASE_URL_<X> would otherwise take this plain URL for another site's (settings refuses that).
    env = {
        "DJANGO_SETTINGS_MODULE": "client_site.settings",
        "REACTIVE_CLIENT": client,
        "DATABASE_URL": url,
        own: url,
    }
    beat_file = heartbeat.child_file(client)
    if beat_file is not None:  # a file of its own: children sharing one would hide a stuck one
        env[heartbeat.VARIABLE] = str(beat_file)
    return ProcessSpec(name=f"listen-{client}", argv=argv, env=env)
