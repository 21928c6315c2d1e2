"""Health of the services a site depends on: its database and Redis."""

from __future__ import annotations

from typing import Any

from reactive import settings


def check_database() -> str | None:
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any driver error means "not healthy"
        return f"{type(exc).__name__}: {exc}"
    return None


def check_redis() -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(settings.redis_url(), socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_services() -> dict[str, Any]:
    failures = {
        name: error for name, error in (("database", check_database()), ("redis", check_redis())) if error
    }
    return {"ok": not failures, "failed": failures}
