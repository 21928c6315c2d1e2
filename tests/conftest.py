from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support import services

# pytest-xdist's workers find COLUMNS=80 set, and rich fixes a console's width when it is created with
# COLUMNS set: the CLI's console would then ignore the widths the CLI tests ask for.
for _fixed_size in ("COLUMNS", "LINES"):
    os.environ.pop(_fixed_size, None)

# Fixtures of the realtime tests (a real channels-redis layer) live beside their helpers.
pytest_plugins = ["tests.support.realtime"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: crosses process boundaries (real workers, listeners, servers)")
    config.addinivalue_line("markers", "browser: drives Chromium through Playwright")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with services.moto_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with services.redis_service() as url:
        yield url


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def aws_env(moto_endpoint: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """This test's AWS world: moto's server and names of its own (a fresh prefix)."""
    from reactive.transport import get_transport

    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "REACTIVE_PREFIX": prefix,
        "REACTIVE_TRANSPORT": "sqs",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_transport.cache_clear()
    yield env
    get_transport.cache_clear()


@pytest.fixture
def provisioned(aws_env: dict[str, str]) -> dict[str, str]:
    """Topic, queues and DLQs for alpha and beta (max 2 receives, so poison dies fast)."""
    from reactive.provision import Options, Provisioner

    Provisioner(Options(clients=["alpha", "beta"], max_receives=2)).run()
    return aws_env


@pytest.fixture
def sqs(provisioned: dict[str, str]):  # type: ignore[no-untyped-def]
    from reactive.transport.sqs import SqsTransport

    return SqsTransport(f"{provisioned['REACTIVE_PREFIX']}-users")


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch, prefix: str):  # type: ignore[no-untyped-def]
    """An in-process transport with alpha and beta subscribed (max 2 receives, 0.2 s visibility)."""
    from reactive.transport.memory import MemoryTransport

    monkeypatch.setenv("REACTIVE_PREFIX", prefix)
    transport = MemoryTransport()
    for client in ("alpha", "beta"):
        transport.create_queue(f"{prefix}-{client}-dlq")
        transport.create_queue(
            f"{prefix}-{client}", dlq=f"{prefix}-{client}-dlq", max_receives=2, visibility_timeout=0.2
        )
        transport.subscribe(f"{prefix}-{client}")
    return transport


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Change capture on auth.User for this test (master behaviour), relaying nothing by itself."""
    from django.contrib.auth import get_user_model

    from reactive import capture

    monkeypatch.setenv("REACTIVE_RELAY", "off")
    capture.track(get_user_model(), predicate=capture.non_staff)
    yield
    capture.untrack(get_user_model())


@pytest.fixture
def on_postgres() -> None:
    """The test is about PostgreSQL's own row locks: its database must be PostgreSQL (TEST_POSTGRES_URL)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        services.missing("PostgreSQL", "TEST_POSTGRES_URL is not set")


@pytest.fixture(autouse=True)
def no_relay_burst_in_memory() -> None:
    """A burst relayed by an earlier test is not this test's load (the relay remembers one per process)."""
    from reactive import outbox

    outbox._last_burst.clear()
    outbox._broker_down_until = 0.0  # nor a broker outage it met


@pytest.fixture(autouse=True)
def _nothing_frozen_after() -> Iterator[None]:
    """Websocket tests run the client site here, which freezes settled objects (client_site/web/heap.py)."""
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests choose their own services; a developer's shell must not leak into them.
    for name in ("DATABASE_URL", "REACTIVE_RELAY"):
        if name in os.environ:
            monkeypatch.delenv(name)
