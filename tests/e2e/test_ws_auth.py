"""Websocket admission under a real uvicorn server with a real websocket client: only the right signed-in
user, in their own room, from an allowed origin; then the listener's committed changes arrive."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from reactive.up import WS_MAX_SIZE
from tests.support.services import eventually
from tests.support.sites import Deployment
from tests.support.web import replica_names, serve, session_cookie, set_first_name

pytestmark = pytest.mark.e2e

CREATE_USERS = """
from django.contrib.auth import get_user_model
U = get_user_model()
U.objects.create_user("alice", "a@example.com", "pw", first_name="Alice")
U.objects.create_user("bob", "b@example.com", "pw", first_name="Bob")
"""


async def next_change(socket: Any, timeout: float) -> dict[str, Any]:
    """The next frame that is not a heartbeat (the server sends one every 20 s to every user socket)."""
    async with asyncio.timeout(timeout):
        while True:
            message: dict[str, Any] = json.loads(await socket.recv())
            if message.get("type") != "heartbeat":
                return message


async def attempt(url: str, cookie: str | None, origin: str) -> tuple[str, Any]:
    headers = {"Origin": origin}
    if cookie:
        headers["Cookie"] = f"sessionid={cookie}"
    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=5) as ws:
            return "accepted", json.loads(await asyncio.wait_for(ws.recv(), 5))
    except websockets.InvalidStatus as refused:
        return "refused", refused.response.status_code


def test_only_the_right_user_and_origin_get_in_and_changes_follow(deployment: Deployment) -> None:
    deployment.start_worker()
    deployment.start_listener("alpha", "--wait", "1")
    deployment.python("master", CREATE_USERS)
    eventually(lambda: replica_names(deployment, "alpha") == {"alice": "Alice", "bob": "Bob"}, timeout=60)
    cookie = session_cookie(deployment, "alpha", "alice")
    site = serve(deployment, "alpha")
    ws, good, evil = site.url.replace("http", "ws"), site.url, "http://evil.example"

    async def admissions() -> dict[str, tuple[str, Any]]:
        cases = {
            "clock, no session": ("/time/tic/", None, good),
            "clock, foreign origin": ("/time/tic/", cookie, evil),
            "bob's room": ("/ws/bob", cookie, good),
            "own room, no session": ("/ws/alice", None, good),
            "own room, foreign origin": ("/ws/alice", cookie, evil),
            "own room, forged session": ("/ws/alice", "x" * 32, good),
            "clock": ("/time/tic/", cookie, good),
            "own room": ("/ws/alice", cookie, good),
        }
        return {name: await attempt(ws + path, ck, origin) for name, (path, ck, origin) in cases.items()}

    results = asyncio.run(admissions())
    refused = {name: result for name, result in results.items() if result[0] == "refused"}
    assert refused == {name: ("refused", 403) for name in list(results)[:6]}
    assert results["clock"][1]["type"] == "clock.tick" and len(results["clock"][1]["time"]) == 8
    first = results["own room"][1]
    assert first["type"] == "profile" and first["profile"]["first_name"] == "Alice"

    async def live_change() -> list[dict[str, Any]]:
        headers = {"Origin": good, "Cookie": f"sessionid={cookie}"}
        async with websockets.connect(ws + "/ws/alice", additional_headers=headers) as socket:
            # Served as in production: no per-message deflate, even when the client offers it.
            assert socket.response.headers.get("Sec-WebSocket-Extensions") is None
            received = [json.loads(await asyncio.wait_for(socket.recv(), 5))]
            await asyncio.to_thread(set_first_name, deployment, "alice", "Alicia")
            received.append(await next_change(socket, 60))
            return received

    on_connect, change = asyncio.run(live_change())
    assert change["type"] == "user.changed"
    assert change["profile"]["first_name"] == "Alicia"
    assert change["profile"]["key"] == on_connect["profile"]["key"]
    assert change["profile"]["version"] > on_connect["profile"]["version"]

    async def oversized_frame() -> tuple[dict[str, Any], int | None]:
        """A page never sends; small junk is dropped (the socket goes on), a frame past 4 KiB closes it."""
        headers = {"Origin": good, "Cookie": f"sessionid={cookie}"}
        async with websockets.connect(ws + "/ws/alice", additional_headers=headers) as socket:
            await asyncio.wait_for(socket.recv(), 5)
            await socket.send("not json {")
            await socket.send(b"\x00\xff")
            pong = await socket.ping()
            await asyncio.wait_for(pong, 5)  # answered: the junk did not end the socket
            await asyncio.to_thread(set_first_name, deployment, "alice", "Alice again")
            after = await next_change(socket, 60)
            await socket.send("x" * (WS_MAX_SIZE + 1))
            try:
                await asyncio.wait_for(socket.recv(), 10)
            except websockets.ConnectionClosed as closed:
                return after, closed.rcvd.code if closed.rcvd else None
            except TimeoutError:
                pass
            return after, None  # still open: the frame was taken

    after_junk, close_code = asyncio.run(oversized_frame())
    assert after_junk["profile"]["first_name"] == "Alice again"
    assert close_code == 1009  # message too big
