"""The heartbeat file of the long-running loops: touching, the probe (`python -m reactive.heartbeat`), and
one file for several supervised listeners that goes stale when any one of them is stuck."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reactive import heartbeat
from reactive.errors import ConfigError
from reactive.heartbeat import Heartbeat, Relay, age, check, relay_for, touch
from reactive.supervisor import Child, ProcessSpec, listener_spec
from tests.support.heartbeats import aged

ROOT = Path(__file__).resolve().parent.parent


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The liveness probe as Kubernetes runs it: a fresh interpreter with the container's environment."""
    return subprocess.run(
        [sys.executable, "-m", "reactive.heartbeat", *args],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_touch_creates_the_file_and_moves_only_its_mtime(tmp_path: Path) -> None:
    path = tmp_path / "run" / "listener.alive"
    touch(path)
    assert path.read_bytes() == b"" and age(path) < 5
    aged(path, 600)
    touch(path)
    assert age(path) < 5 and path.read_bytes() == b""  # nothing written: nothing a probe could misread
    touch(path, mtime=1000.0)
    assert path.stat().st_mtime == 1000.0


def test_check_says_why_a_probe_fails(tmp_path: Path) -> None:
    path = tmp_path / "beat.alive"
    assert check(None, 30) == "REACTIVE_HEARTBEAT_FILE is not set"
    assert "does not exist" in str(check(path, 30))
    touch(path)
    assert check(path, 30) is None
    aged(path, 45)
    assert "is 45 s old (at most 30 s)" in str(check(path, 30))


def test_the_probe_reads_the_variable_and_fails_on_a_stale_missing_or_unset_file(tmp_path: Path) -> None:
    path = tmp_path / "listener.alive"
    env = {"REACTIVE_HEARTBEAT_FILE": str(path)}
    missing = probe(env, "--max-age", "120")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    touch(path)
    assert probe(env, "--max-age", "120").returncode == 0
    aged(path, 121)
    stale = probe(env, "--max-age", "120")
    assert stale.returncode == 1 and "the loop is stuck" in stale.stderr
    assert probe({}, "--max-age", "120").returncode == 1
    assert probe({}, "--max-age", "120", str(path)).returncode == 1  # an explicit path, as stale
    assert probe({}, "--max-age", "200", str(path)).returncode == 0


def test_client_in_the_path_becomes_the_clients_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reactive import settings

    monkeypatch.setenv("REACTIVE_HEARTBEAT_FILE", str(tmp_path / "{client}.alive"))
    monkeypatch.setenv("REACTIVE_CLIENT", "beta")
    assert settings.heartbeat_file("alpha") == tmp_path / "alpha.alive"
    assert settings.heartbeat_file() == tmp_path / "beta.alive"
    touch(tmp_path / "beta.alive")
    env = {"REACTIVE_HEARTBEAT_FILE": str(tmp_path / "{client}.alive"), "REACTIVE_CLIENT": "beta"}
    assert probe(env, "--max-age", "30").returncode == 0
    monkeypatch.delenv("REACTIVE_HEARTBEAT_FILE")
    assert settings.heartbeat_file("alpha") is None


def test_beats_are_throttled_and_a_file_nobody_can_write_is_refused_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "beat.alive"
    beats = Heartbeat(path, every=60)
    beats.start()
    aged(path, 100)
    beats.beat()  # within a minute of the last: not touched again
    assert age(path) > 90
    Heartbeat(None).beat()  # no file configured: nothing to do, no error
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(ConfigError, match="cannot write"):
        Heartbeat(blocked / "beat.alive").start()
    late = Heartbeat(blocked / "beat.alive", every=0)
    with caplog.at_level(logging.WARNING, logger="reactive.heartbeat"):
        late.beat()
        late.beat()
    assert caplog.text.count("cannot touch the heartbeat file") == 1  # once a streak, not once a second


def test_a_pause_beats_all_along_and_ends_early_on_stop(tmp_path: Path) -> None:
    times: list[float] = []

    class Counted(Heartbeat):
        def beat(self) -> None:
            times.append(time.monotonic())
            super().beat()

    class Waits(threading.Event):  # the waits the pause asks for: a loaded machine may take longer
        asked: list[float] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.asked.append(timeout or 0)
            return super().wait(timeout)

    beats, stop = Counted(tmp_path / "listener.alive", every=0), Waits()
    assert beats.pause(stop, 2.5) is False
    assert len(times) == len(stop.asked) + 1 >= 4  # a beat before every wait, and one at the end
    assert max(stop.asked) <= heartbeat.EVERY_SECONDS and sum(stop.asked) == pytest.approx(2.5, abs=0.5)
    threading.Timer(0.2, stop.set).start()
    assert beats.pause(stop, 30) is True and len(stop.asked) < 10  # ended by the stop, not by the 30 s


def test_supervised_listeners_each_get_a_file_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REACTIVE_HEARTBEAT_FILE", "/run/reactive/listener.alive")
    specs = [listener_spec(c) for c in ("alpha", "beta")]
    assert [s.env["REACTIVE_HEARTBEAT_FILE"] for s in specs] == [
        "/run/reactive/listener.alive.alpha",
        "/run/reactive/listener.alive.beta",
    ]
    relay = relay_for(specs)
    assert relay is not None and relay.target == Path("/run/reactive/listener.alive")
    monkeypatch.setenv("REACTIVE_HEARTBEAT_FILE", "/run/{client}.alive")
    specs = [listener_spec(c) for c in ("alpha", "beta")]
    assert [s.env["REACTIVE_HEARTBEAT_FILE"] for s in specs] == ["/run/alpha.alive", "/run/beta.alive"]
    assert relay_for(specs) is None  # no one file names them all: probe each child's own
    monkeypatch.delenv("REACTIVE_HEARTBEAT_FILE")
    specs = [listener_spec(c) for c in ("alpha", "beta")]
    assert not any("REACTIVE_HEARTBEAT_FILE" in s.env for s in specs) and relay_for(specs) is None


def test_the_groups_file_is_as_old_as_its_most_stuck_child(tmp_path: Path) -> None:
    target, alpha, beta = tmp_path / "listener.alive", tmp_path / "a.alive", tmp_path / "b.alive"
    relay = Relay(target, {"listen-alpha": alpha, "listen-beta": beta})
    for name in ("listen-alpha", "listen-beta"):
        relay.child_changed(Child(ProcessSpec(name, ["true"]), state="running"))
    relay.tick()
    assert check(target, 30) is None
    aged(beta, 300)  # beta stopped going round; alpha goes on
    touch(alpha)
    relay.tick()
    assert check(target, 30) is not None and age(target) > 290
    relay.child_changed(Child(ProcessSpec("listen-beta", ["true"]), state="backoff"))
    relay.tick()
    assert age(target) > 290  # a crashed child counts as fresh only once restarted
    relay.child_changed(Child(ProcessSpec("listen-beta", ["true"]), state="running"))
    relay.tick()
    assert check(target, 30) is None
    beta.unlink()
    aged(target, 50)
    relay.tick()
    assert age(target) > 45  # a child's file removed under it: the target ages, it is not made fresh
