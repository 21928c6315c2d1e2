from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import services
from tests.support.sites import Deployment


@pytest.fixture
def deployment(provisioned: dict[str, str], redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    """A migrated master and two clients (alpha, beta) on SQLite files, moto's server and Redis."""
    env = {**provisioned, "REDIS_URL": redis_url, "REACTIVE_SSO_KEY": "e2e-sso-key-0123456789abcdef"}
    system = Deployment(workdir=tmp_path, base_env=env)
    system.migrate()
    yield system
    system.stop_all()


@pytest.fixture
def pg_deployment(provisioned: dict[str, str], redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    """The same on PostgreSQL (TEST_POSTGRES_URL): one database per site, dropped afterwards."""
    import psycopg

    base = os.environ.get("TEST_POSTGRES_URL")
    if not base:
        services.missing("PostgreSQL", "TEST_POSTGRES_URL is not set")
    assert base
    prefix = provisioned["REACTIVE_PREFIX"]
    sites = ("master", "alpha", "beta")
    names = {site: f"{prefix}_{site}" for site in sites}
    try:
        admin = psycopg.connect(base, autocommit=True)
    except psycopg.OperationalError as exc:
        services.missing("PostgreSQL", str(exc))
    with admin:
        for name in names.values():
            admin.execute(f'CREATE DATABASE "{name}"')
        root = base.rsplit("/", 1)[0]
        env = {**provisioned, "REDIS_URL": redis_url, "REACTIVE_SSO_KEY": "e2e-sso-key-0123456789abcdef"}
        system = Deployment(
            workdir=tmp_path, base_env=env, database_urls={s: f"{root}/{n}" for s, n in names.items()}
        )
        try:
            system.migrate()
            yield system
        finally:
            try:
                system.stop_all()
            finally:  # a process that ignored SIGTERM fails the test, but leaves no database behind
                for name in names.values():
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
