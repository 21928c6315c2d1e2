"""Liveness of the long-running loops (the listener, the clock beat): a file whose mtime is the signal.

A process that is running but stuck (a hung call, a deadlock, a blocked event loop) keeps its pid and
its port; what it no longer does is go round its loop. Each loop touches ``REACTIVE_HEARTBEAT_FILE`` as
it goes round, and a probe fails when the file is older than one round could ever take:

    python -m reactive.heartbeat --max-age 200

Touching changes the mtime only (one utime call, which the kernel makes atomically); nothing is ever
written into the file, so a probe cannot read it half-written. An outage is not a stuck loop: the
listener and the beat go on touching while they retry, so a probe never restarts them for it.

``reactive listen`` with several clients runs one child per client: each child touches a file of its
own (``{client}`` in the path, or else the path with ``.<client>`` appended), and when the path has no
``{client}`` the supervisor gives the named file the mtime of the oldest child's, so that one probe
fails as soon as any one child is stuck.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reactive import settings
from reactive.errors import ConfigError

if TYPE_CHECKING:
    from reactive.supervisor import Child, ProcessSpec

log = logging.getLogger("reactive.heartbeat")
VARIABLE = "REACTIVE_HEARTBEAT_FILE"
# Seconds between touches, and the longest a wait of the loop (a backoff, a slow clock) goes without one:
# far below any sensible probe age, and a utime a second costs nothing.
EVERY_SECONDS = 1.0


def touch(path: Path, mtime: float | None = None) -> None:
    """Set ``path``'s mtime (now, or ``mtime``), creating it empty when missing."""
    times = None if mtime is None else (mtime, mtime)
    try:
        os.utime(path, times)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, times)


def age(path: Path, now: float | None = None) -> float:
    """Seconds since ``path`` was last touched (FileNotFoundError when it never was)."""
    return (time.time() if now is None else now) - path.stat().st_mtime


class Heartbeat:
    """Touches one file as a loop goes round, at most every ``every`` seconds; a no-op without a path."""

    def __init__(self, path: Path | None, *, every: float = EVERY_SECONDS) -> None:
        self.path = path
        self.every = every
        self._last = float("-inf")
        self._failing = False

    @classmethod
    def configured(cls, client: str | None = None) -> Heartbeat:
        """The heartbeat REACTIVE_HEARTBEAT_FILE names for this process (``{client}`` expanded), if any."""
        return cls(settings.heartbeat_file(client))

    def beat(self) -> None:
        if self.path is None or time.monotonic() - self._last < self.every:
            return
        try:
            touch(self.path)
        except OSError as exc:
            # Not fatal to the work itself: the probe will see the stale file and say so. Logged once a streak.
            if not self._failing:
                log.warning("cannot touch the heartbeat file %s: %s", self.path, exc)
            self._failing = True
            return
        self._failing = False
        self._last = time.monotonic()

    def start(self) -> None:
        """The first beat, which must work: a heartbeat nobody can write would only restart the process."""
        if self.path is None:
            return
        try:
            touch(self.path)
        except OSError as exc:
            raise ConfigError(f"{VARIABLE}: cannot write {self.path}: {exc}") from exc
        self._last = time.monotonic()

    def pause(self, stop: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` (or until ``stop`` is set; then True), beating all along: a wait is not a hang."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.beat()
            if stop.wait(min(left, EVERY_SECONDS)):
                return True
        self.beat()
        return stop.is_set()


# -- several clients under one supervisor ---------------------------------------------------------------
def child_file(client: str) -> Path | None:
    """The file one supervised child touches: the path with ``{client}`` expanded, or ``PATH.<client>``."""
    raw = settings.heartbeat_template()
    if not raw:
        return None
    if "{client}" in raw:
        return settings.heartbeat_file(client)
    return Path(f"{raw}.{client}")


class Relay:
    """Keeps ``target``'s mtime at the oldest of the children's: fresh only while every child beats.

    A child's file is touched when the supervisor (re)starts it, so a child is not counted stuck while it
    starts up; one that crashed is restarted within the supervisor's backoff. If the supervisor itself
    hangs, the target is no longer updated and goes stale too.
    """

    def __init__(self, target: Path, children: Mapping[str, Path]) -> None:
        self.target = target
        self.children = dict(children)
        self._failing = False

    def start(self) -> None:
        """Fail now, with a clear error, when the file cannot be written (as a lone listener does)."""
        Heartbeat(self.target).start()

    def child_changed(self, child: Child) -> None:
        if child.state == "running" and child.spec.name in self.children:
            self._touch(self.children[child.spec.name])

    def tick(self) -> None:
        try:
            oldest = min(path.stat().st_mtime for path in self.children.values())
        except FileNotFoundError:  # a child's file removed under it: leave the target to age
            return
        self._touch(self.target, oldest)

    def _touch(self, path: Path, mtime: float | None = None) -> None:
        try:
            touch(path, mtime)
        except OSError as exc:  # the supervisor goes on; the probe sees the stale file (logged once a streak)
            if not self._failing:
                log.warning("cannot touch the heartbeat file %s: %s", path, exc)
            self._failing = True
            return
        self._failing = False


def relay_for(specs: Sequence[ProcessSpec]) -> Relay | None:
    """The relay of a supervised group of listeners, when the heartbeat path names one file for them all.

    With ``{client}`` in the path there is no such file: each child's own is the one to probe.
    """
    raw = settings.heartbeat_template()
    children = {spec.name: Path(spec.env[VARIABLE]) for spec in specs if VARIABLE in spec.env}
    if not raw or "{client}" in raw or not children:
        return None
    return Relay(Path(raw), children)


# -- the probe: python -m reactive.heartbeat --max-age SECONDS [PATH] -----------------------------------
def check(path: Path | None, max_age: float, now: float | None = None) -> str | None:
    """Why a probe should fail (no file configured, none yet, too old), or None when it is fresh."""
    if path is None:
        return f"{VARIABLE} is not set"
    try:
        seconds = age(path, now)
    except FileNotFoundError:
        return f"{path} does not exist (the loop has not gone round yet)"
    if seconds > max_age:
        return f"{path} is {seconds:.0f} s old (at most {max_age:g} s): the loop is stuck"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reactive.heartbeat",
        description="Exit 0 when the heartbeat file is fresh, 1 (saying why) when it is missing or too old.",
    )
    parser.add_argument("--max-age", type=float, required=True, help="seconds a fresh file may be old")
    parser.add_argument("path", nargs="?", help=f"the file (default: {VARIABLE}, {{client}} expanded)")
    options = parser.parse_args(argv)
    try:
        path = Path(options.path) if options.path else settings.heartbeat_file()
    except ConfigError as exc:
        print(f"heartbeat: {exc}", file=sys.stderr)
        return 1
    problem = check(path, options.max_age)
    if problem:
        print(f"heartbeat: {problem}", file=sys.stderr)  # the kubelet shows it in the pod's events
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
