from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sites import Deployment


@pytest.fixture
def deployment(provisioned: dict[str, str], redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    """A migrated master and two clients (alpha, beta) on moto's server and Redis; processes stopped after."""
    env = {**provisioned, "REDIS_URL": redis_url, "REACTIVE_SSO_KEY": "e2e-sso-key-0123456789abcdef"}
    system = Deployment(workdir=tmp_path, base_env=env)
    system.migrate()
    yield system
    system.stop_all()
