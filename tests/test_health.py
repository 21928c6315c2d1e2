"""/health: 200 or 503 naming what failed, without telling the public more than the failure's type; /live:
200 from the event loop itself, asking neither the database nor Redis."""

from __future__ import annotations

import json

import pytest
from django.test import Client


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("debug", "shown"), [(False, "ConnectionError"), (True, "ConnectionError: Error 111")]
)
def test_a_failed_service_is_named_and_its_details_stay_in_the_log(
    monkeypatch: pytest.MonkeyPatch,
    settings: object,
    caplog: pytest.LogCaptureFixture,
    debug: bool,
    shown: str,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://secret-user:secret-pass@127.0.0.1:1/0")
    settings.DEBUG = debug  # type: ignore[attr-defined]
    response = Client().get("/health")
    assert response.status_code == 503
    failed = response.json()["failed"]
    assert list(failed) == ["redis"] and failed["redis"].startswith(shown)
    if not debug:
        assert failed["redis"] == shown
    assert "redis unavailable: ConnectionError" in caplog.text
    assert not [
        r for r in caplog.records if r.name == "django.request"
    ]  # a probe's 503 is logged once, above


# -- /live: liveness, answered whatever the database and Redis do --------------------------------------------
LIVE_SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "scheme": "http",
    "path": "/live",
    "raw_path": b"/live",
    "query_string": b"",
    "root_path": "",
    # The kubelet's httpGet without httpHeaders sends the pod's IP, which no ALLOWED_HOSTS lists.
    "headers": [(b"host", b"10.1.2.3:8000"), (b"user-agent", b"kube-probe/1.31")],
    "client": ("10.1.2.1", 50000),
    "server": ("10.1.2.3", 8000),
}


def asgi_get(app: object, method: str = "GET", path: str = "/live") -> tuple[int, bytes, set[int]]:
    """One request to an ASGI app: (status, body, the threads that sent the response)."""
    import threading

    from asgiref.sync import async_to_sync

    sent: list[dict] = []
    threads: set[int] = set()

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        threads.add(threading.get_ident())
        sent.append(message)

    async def call() -> int:
        await app({**LIVE_SCOPE, "method": method, "path": path, "raw_path": path.encode()}, receive, send)  # type: ignore[operator]
        return threading.get_ident()

    loop_thread = async_to_sync(call)()
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert threads <= {loop_thread}, "the response came from another thread than the event loop's"
    return sent[0]["status"], body, threads


def test_the_front_answers_live_on_the_loop_and_never_calls_django() -> None:
    from reactive.health import answer_liveness

    passed: list[str] = []

    async def django(scope: dict, receive: object, send: object) -> None:
        passed.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 404, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    app = answer_liveness(django)  # type: ignore[arg-type]
    status, body, _ = asgi_get(app)
    assert (status, json.loads(body)) == (200, {"ok": True})
    assert asgi_get(app, "HEAD")[:2] == (200, b"")
    assert not passed
    asgi_get(app, "POST")
    asgi_get(app, "GET", "/live/")
    asgi_get(app, "GET", "/health")
    assert passed == ["POST /live", "GET /live/", "GET /health"]  # everything else is Django's


@pytest.mark.parametrize("module", ["master_site.asgi", "client_site.asgi"])
def test_both_sites_answer_live_before_django_with_redis_and_the_database_out_of_reach(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No django_db mark: any database access would raise. Redis is a closed port. The Host is the pod's
    IP, which Django would refuse with a 400: the 200 comes from the front, before Django."""
    import importlib

    from tests.support.services import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    application = importlib.import_module(module).application
    status, body, _ = asgi_get(application)
    assert (status, json.loads(body)) == (200, {"ok": True})


@pytest.mark.parametrize("urlconf", ["client_site.urls", "master_site.urls"])
def test_the_django_route_live_reads_no_session_database_or_redis(
    urlconf: str, settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where Django itself serves /live (no front): no django_db mark, so a session or user lookup, or any
    query, would raise; Redis is a closed port."""
    import asyncio

    from django.urls import resolve

    from tests.support.services import free_port

    settings.ROOT_URLCONF = urlconf  # type: ignore[attr-defined]
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert asyncio.iscoroutinefunction(resolve("/live").func)  # async: no thread of its own in ASGI
    client = Client(HTTP_COOKIE="sessionid=" + "s" * 32)  # a session cookie, never looked up
    response = client.get("/live")
    assert (response.status_code, response.json()) == (200, {"ok": True})
