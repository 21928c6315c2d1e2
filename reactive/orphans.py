"""A supervised child that dies with its supervisor, even one killed with SIGKILL.

``python -m reactive.orphans PID -- ARGV...`` asks Linux to send this process SIGTERM when its parent
dies (prctl PR_SET_PDEATHSIG, which survives exec), checks that the parent is still PID (it may have
died before the request), then becomes ARGV: same pid, same session, nothing in between. The child's
own SIGTERM handling (a listener finishes its batch, uvicorn and Celery shut down warmly) does the rest.
Elsewhere than Linux it only becomes ARGV.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def guarded(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that it stops when this process dies (Linux); ``argv`` itself elsewhere."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-m", "reactive.orphans", str(os.getpid()), "--", *argv]


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def main(args: Sequence[str]) -> None:
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: python -m reactive.orphans PARENT_PID -- COMMAND [ARG]...")
    parent, argv = int(args[0]), list(args[2:])
    if sys.platform.startswith("linux"):
        _die_with_parent()
        if os.getppid() != parent:  # the supervisor died before the request: nothing would ever signal us
            sys.exit(f"{argv[0]}: not started, its supervisor (pid {parent}) is gone")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
