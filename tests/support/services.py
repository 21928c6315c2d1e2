"""Real services for the tests: moto's server over HTTP, Redis, free ports, polling with a deadline.

With CI=true a missing service is a failure (pytest.fail), never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest
import redis

T = TypeVar("T")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def eventually(
    check: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns a truthy value (or stops raising AssertionError) before the deadline."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except AssertionError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout} s" + (f": {last}" if last else ""))
        time.sleep(interval)  # poll interval under a deadline


def missing(service: str, why: str) -> None:
    """A service the tests need is absent: a failure in CI, a skip on a developer's machine."""
    message = f"{service} unavailable: {why}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextmanager
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        client.ping()
        client.close()
        return True
    except redis.RedisError:
        return False


@contextmanager
def redis_service() -> Iterator[str]:
    """REDIS_URL (or 127.0.0.1:6379, db 13) when it answers; otherwise a redis-server of our own."""
    wanted = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/13"
    if redis_answers(wanted):
        yield wanted
        return
    binary = shutil.which("redis-server")
    if binary is None:
        missing("Redis", f"nothing answers at {wanted} and no redis-server is on the PATH")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="reactive-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        eventually(lambda: redis_answers(url), timeout=10, what="redis-server start")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
