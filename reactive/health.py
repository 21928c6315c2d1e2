"""Health of the services a site depends on: its database and Redis."""

from __future__ import annotations

import logging
from typing import Any

from reactive import settings

log = logging.getLogger("reactive.health")


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
    """{"ok": ..., "failed": {service: why}}. /health is public: with DEBUG off it names only the error's
    type (a driver's message may hold a host, a user or a path), and the whole message goes to the log."""
    from django.conf import settings as django_settings

    failures = {
        name: error for name, error in (("database", check_database()), ("redis", check_redis())) if error
    }
    for name, error in failures.items():
        log.warning("health: %s unavailable: %s", name, error)
    if not django_settings.DEBUG:
        failures = {name: error.split(":", 1)[0] for name, error in failures.items()}
    return {"ok": not failures, "failed": failures}


def response() -> Any:
    """/health of either site: 200 when the database and Redis answer, 503 naming what failed."""
    from django.http import JsonResponse

    report = check_services()
    answer = JsonResponse(report, status=200 if report["ok"] else 503)
    # check_services logged why; Django would log each probe's 503 again, every few seconds.
    answer._has_been_logged = True
    return answer
