"""Heartbeat files in tests: make one look stale, and tell whether the loop has touched it since."""

from __future__ import annotations

import os
import time
from pathlib import Path


def aged(path: Path, seconds: float) -> None:
    """Make ``path`` look last touched ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def fresh(path: Path) -> bool:
    """Touched within the last few seconds (a stale one was aged by minutes)."""
    from reactive.heartbeat import age

    return path.exists() and age(path) < 5
