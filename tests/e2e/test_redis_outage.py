"""A Redis outage under an open page, for real: the listener reaches Redis through a proxy that is cut, a
change is applied meanwhile (its push goes nowhere), and the listener stops before Redis is back, so it
will never send it again. The page still shows the change, without a reload: when the web process lost
Redis too (through the same proxy), once Redis answers; when only the listener did (a partition), at the
site's next check of its open pages against the replica (client_site/web/freshness.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any
from urllib.parse import urlparse

import pytest
import websockets

from reactive.events import Event, encode
from reactive.transport.base import OutgoingMessage
from reactive.transport.sqs import SqsTransport
from tests.support.proxy import Proxy
from tests.support.realtime import until
from tests.support.services import eventually, free_port
from tests.support.sites import VENV_BIN, Deployment
from tests.support.web import replica_names, serve, session_cookie

pytestmark = pytest.mark.e2e


def publish(prefix: str, version: int, first_name: str) -> None:
    action = "insert" if version == 1 else "update"
    data = {"username": "alice", "first_name": first_name, "is_active": True}
    event = Event(model="auth.user", action=action, key="1", version=version, data=data)
    SqsTransport(f"{prefix}-users").publish(
        [OutgoingMessage(str(version), encode(event), event.message_attributes())]
    )


class Page:
    """What the live page does with its socket: show the profile sent on connect and every newer change;
    reconnect after a close or a refused handshake, as socket.js does. Open (run) for the whole test."""

    def __init__(self, url: str, cookie: str) -> None:
        self.url, self.cookie = url, cookie
        self.shown: dict[str, Any] = {}
        self.connections = 0

    async def run(self) -> None:
        headers = {"Origin": self.url.replace("ws", "http", 1), "Cookie": f"sessionid={self.cookie}"}
        while True:
            try:
                async with websockets.connect(
                    self.url + "/ws/", additional_headers=headers, open_timeout=5
                ) as ws:
                    self.connections += 1
                    async for text in ws:
                        self._take(json.loads(text))
            except (OSError, websockets.WebSocketException):
                pass
            await asyncio.sleep(0.5)  # the page's backoff, shortened

    def _take(self, message: dict[str, Any]) -> None:
        profile = message.get("profile") or {}
        if message.get("type") == "profile" or profile.get("version", 0) > self.shown.get("version", 0):
            self.shown = profile

    async def shows(self, first_name: str, timeout: float) -> bool:
        with contextlib.suppress(AssertionError):  # not within the deadline: the caller says what it expected
            await until(lambda: self.shown.get("first_name") == first_name, timeout=timeout)
        return self.shown.get("first_name") == first_name


@pytest.mark.parametrize(
    ("layer", "cut_off"),
    [("redis", "site and listener"), ("pubsub", "site and listener"), ("redis", "listener")],
)
def test_a_change_applied_while_redis_was_out_reaches_the_open_page_after_its_listener_stopped(
    deployment: Deployment, redis_url: str, layer: str, cut_off: str
) -> None:
    prefix = deployment.base_env["REACTIVE_PREFIX"]
    url = urlparse(redis_url)
    proxy = Proxy(target_port=url.port or 6379, port=free_port())
    proxy.up()
    through_proxy = {
        "REDIS_URL": url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl(),
        "REACTIVE_CHANNEL_LAYER": layer,
    }
    listen = [str(VENV_BIN / "reactive"), "listen", "--client", "alpha", "--wait", "1"]
    listener = deployment.start("alpha", listen, "listen-alpha", **through_proxy)
    publish(prefix, 1, "Alice")
    eventually(lambda: replica_names(deployment, "alpha") == {"alice": "Alice"}, timeout=60)
    site_env = through_proxy if cut_off == "site and listener" else {"REACTIVE_CHANNEL_LAYER": layer}
    site = serve(deployment, "alpha", **site_env)
    page = Page(site.url.replace("http", "ws", 1), session_cookie(deployment, "alpha", "alice"))

    async def scenario() -> tuple[bool, bool, bool]:
        open_page = asyncio.create_task(page.run())
        try:
            opened = await page.shows("Alice", timeout=30)
            proxy.down()
            publish(prefix, 2, "Alicia")
            await asyncio.to_thread(
                eventually, lambda: replica_names(deployment, "alpha") == {"alice": "Alicia"}, timeout=60
            )
            listener.send_signal(signal.SIGTERM)
            stopped = await asyncio.to_thread(listener.wait, 30) == 0
            unseen_while_out = page.shown.get("first_name") == "Alice"
            proxy.up()
            await page.shows("Alicia", timeout=30)
            return opened, stopped, unseen_while_out
        finally:
            open_page.cancel()

    started = time.monotonic()
    try:
        opened, stopped, unseen_while_out = asyncio.run(scenario())
    finally:
        proxy.down()
    shown = page.shown
    assert opened and stopped, deployment.log("listen-alpha")
    if (layer, cut_off) == ("redis", "site and listener"):  # elsewhere the site's own check may come first
        assert unseen_while_out
    assert shown.get("first_name") == "Alicia", (
        f"after {time.monotonic() - started:.0f} s and {page.connections} connection(s) the page shows "
        f"{shown}\n{deployment.log('uvicorn-alpha')[-3000:]}"
    )
    assert "1 changes never reached browsers" in deployment.log("listen-alpha"), deployment.log(
        "listen-alpha"
    )
    site_log = deployment.log("uvicorn-alpha")
    assert "Exception in ASGI application" not in site_log, site_log  # a socket Redis left closes cleanly
