"""Health of a site: readiness (/health: its database and Redis answer) and liveness (/live: it answers).

The two differ on purpose. Readiness asks the services, and a pod that fails it only leaves its Service;
liveness must not (an outage of the database or Redis would restart every web pod at once), yet it must
fail when the process itself is stuck, which a TCP check does not see (the kernel accepts connections for
a process whose event loop is blocked). So /live is answered by the event loop itself, in front of
Django: Django's request path hops to a thread for every middleware (MiddlewareMixin's ``__acall__``
runs process_request/process_response through sync_to_async) and for the request_started/finished
signals (close_old_connections), so even an async view would be answered by a thread too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from reactive import settings

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
LIVE_PATH = "/live"
LIVE_BODY = json.dumps({"ok": True}).encode()

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


async def live(request: HttpRequest) -> HttpResponse:
    """/live as a Django view, for servers that run Django without ``answer_liveness`` in front (under
    uvicorn the front answers first): no database, no Redis, no session read."""
    from django.http import HttpResponse

    return HttpResponse(LIVE_BODY, content_type="application/json")


def answer_liveness(app: ASGIApp) -> ASGIApp:
    """``app`` with GET/HEAD /live answered on the event loop, before anything else runs.

    No thread, no database, no Redis, no ALLOWED_HOSTS check (the kubelet asks for the pod's IP, and the
    answer tells nothing): 200 whenever the loop runs, a timeout when it is blocked.
    """

    async def front(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == LIVE_PATH and scope["method"] in ("GET", "HEAD"):
            await _send_alive(send, with_body=scope["method"] == "GET")
            return
        await app(scope, receive, send)

    return front


async def _send_alive(send: Send, *, with_body: bool) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(LIVE_BODY)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": LIVE_BODY if with_body else b""})
