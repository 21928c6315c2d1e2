"""The websocket consumers through the client site's whole ASGI stack (origin check, session auth, routing),
driven by Channels' test communicator on a real channels-redis layer."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
import redis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import OperationalError, transaction

from client_site.web import consumers, epochs, freshness, leavers, origins
from client_site.web.broadcast import broadcast
from client_site.web.consumers import clock_frame
from reactive import clock, groups
from reactive.errors import FailureStreak
from reactive.events import Event, encode
from reactive.listener import Listener
from reactive.replica import ReplicaState
from reactive.transport.base import OutgoingMessage
from tests.support.proxy import Proxy
from tests.support.realtime import group_members, run, session_cookie, until, web_log
from tests.support.services import free_port

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = "http://testserver"


def application() -> Any:
    from client_site.asgi import application

    return application


def communicator(
    path: str,
    cookie: str | None = None,
    origin: str = ORIGIN,
    host: str = "testserver",
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> WebsocketCommunicator:
    headers = [(b"origin", origin.encode()), (b"host", host.encode()), *extra]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application(), path, headers=headers)


def replica(username: str, first_name: str, key: str, version: int) -> Any:
    user = get_user_model().objects.create(username=username, first_name=first_name)
    ReplicaState.objects.create(model="auth.user", key=key, version=version, local_pk=str(user.pk))
    return user


async def in_room(cookie: str) -> WebsocketCommunicator:
    """A page's socket on /ws/, connected and past the profile sent on connect."""
    ws = communicator("/ws/", cookie)
    assert (await ws.connect(timeout=5))[0]
    await ws.receive_json_from(timeout=5)
    return ws


async def profile_then_change(
    path: str, cookie: str, local_pk: Any, profile: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Connect on ``path``, read what is sent on connect, push ``profile`` to the user's group, read that."""
    ws = communicator(path, cookie)
    assert (await ws.connect(timeout=5))[0]
    first = await ws.receive_json_from(timeout=5)
    await groups.send(groups.user_group(local_pk), {"type": groups.USER_CHANGED, "profile": profile})
    second = await ws.receive_json_from(timeout=5)
    await ws.disconnect()
    return first, second


async def on_clock(cookie: str) -> WebsocketCommunicator:
    """A clock page's socket on /time/tic/, connected and past the time sent on connect."""
    ws = communicator("/time/tic/", cookie)
    assert (await ws.connect(timeout=5))[0]
    await ws.receive_json_from(timeout=5)
    return ws


async def refused(
    path: str,
    cookie: str | None = None,
    origin: str = ORIGIN,
    host: str = "testserver",
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bool:
    ws = communicator(path, cookie, origin, host, extra)
    connected, _ = await ws.connect(timeout=5)
    # A refused consumer's layer receive can linger in a blocking Redis read: do not wait for it.
    await ws.disconnect(timeout=0.2)
    return not connected


@pytest.fixture(autouse=True)
def fresh_receive_streak(monkeypatch: pytest.MonkeyPatch) -> None:
    """A streak of receive failures another test left open would say "works again" in this one."""
    streak = FailureStreak(consumers._receive_failures.what, logging.getLogger("reactive.web"))
    monkeypatch.setattr(consumers, "_receive_failures", streak)


@pytest.fixture
def alice(redis_layer: str) -> Any:
    return replica("alice", "Alice", key="17", version=3)


@pytest.fixture
def bob(redis_layer: str) -> Any:
    return replica("bob", "Bob", key="18", version=1)


def test_alice_in_her_room_gets_her_profile_then_each_change(alice: Any) -> None:
    cookie = session_cookie(alice)

    async def scenario() -> list[dict[str, Any]]:
        change = {"key": "17", "version": 4, "username": "alice", "first_name": "Alicia"}
        return list(await profile_then_change("/ws/alice", cookie, alice.pk, change))

    first, second = run(scenario)
    assert first["type"] == "profile"
    assert first["profile"] | {} == {
        "key": "17",
        "version": 3,
        "username": "alice",
        "first_name": "Alice",
        "last_name": "",
        "email": "",
        "is_active": True,
    }
    assert second == {
        "type": "user.changed",
        "profile": {"key": "17", "version": 4, "username": "alice", "first_name": "Alicia"},
    }


def test_a_deleted_account_is_told_and_the_socket_closed(alice: Any) -> None:
    cookie = session_cookie(alice)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        ws = communicator("/ws/alice", cookie)
        assert (await ws.connect(timeout=5))[0]
        await ws.receive_json_from(timeout=5)
        gone = {"key": "17", "version": 5, "deleted": True}
        await groups.send(groups.user_group(alice.pk), {"type": groups.USER_CHANGED, "profile": gone})
        message = await ws.receive_json_from(timeout=5)
        closed = await ws.receive_output(timeout=5)
        await ws.wait()
        return message, closed

    message, closed = run(scenario)
    assert message["profile"]["deleted"] is True
    assert closed == {"type": "websocket.close", "code": 4004}


def test_a_deactivated_account_is_told_then_closed_for_good(alice: Any) -> None:
    """The master sets is_active=False: HTTP signs the user out, and the open socket ends too (4003)."""
    cookie = session_cookie(alice)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], bool]:
        ws = await in_room(cookie)
        group = groups.user_group(alice.pk)
        off = {"key": "17", "version": 4, "username": "alice", "is_active": False}
        await groups.send(group, {"type": groups.USER_CHANGED, "profile": off})
        message = await ws.receive_json_from(timeout=5)
        closed = await ws.receive_output(timeout=5)
        later = {"key": "17", "version": 5, "username": "alice", "first_name": "Secret"}
        await groups.send(group, {"type": groups.USER_CHANGED, "profile": later})
        quiet = await ws.receive_nothing(timeout=0.5)
        await ws.wait()
        return message, closed, quiet

    message, closed, quiet = run(scenario)
    assert message["profile"]["is_active"] is False
    assert closed == {"type": "websocket.close", "code": 4003}
    assert quiet  # a later change of the disabled account is not sent


def test_an_inactive_account_is_refused_even_by_a_backend_that_admits_it(
    redis_layer: str, settings: Any
) -> None:
    settings.AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.AllowAllUsersModelBackend"]
    erin = replica("erin", "Erin", key="19", version=2)
    erin.is_active = False
    erin.save()
    cookie = session_cookie(erin)

    async def scenario() -> list[bool]:
        return [await refused(path, cookie) for path in ("/ws/erin", "/ws/", "/time/tic/")]

    assert run(scenario) == [True, True, True]


@pytest.mark.parametrize("username", ["alice", ".", ".."])
def test_the_session_room_serves_the_signed_in_user_whatever_the_name(
    redis_layer: str, username: str
) -> None:
    """``/ws/`` (the page's path) holds no username: "." and ".." connect from a browser too."""
    user = replica(username, "Dot", key="23", version=2)
    cookie = session_cookie(user)

    async def scenario() -> list[dict[str, Any]]:
        received = []
        for path in ("/ws/", "/ws", f"/ws/{username}"):
            ws = communicator(path, cookie)
            assert (await ws.connect(timeout=5))[0], path
            received.append(await ws.receive_json_from(timeout=5))
            await groups.send(
                groups.user_group(user.pk), {"type": groups.USER_CHANGED, "profile": {"version": 3}}
            )
            received.append(await ws.receive_json_from(timeout=5))
            await ws.disconnect()
        return received

    received = run(scenario)
    assert [m["type"] for m in received] == ["profile", "user.changed"] * 3
    assert {m["profile"]["username"] for m in received[::2]} == {username}


def test_after_a_rename_missed_offline_the_page_path_still_reaches_the_room(alice: Any) -> None:
    """The page's reconnect after a rename it never saw: its path names no user, so it is not refused."""
    cookie = session_cookie(alice)
    alice.username, alice.first_name = "alicia", "Alicia"
    alice.save()

    async def scenario() -> tuple[dict[str, Any], bool]:
        ws = communicator("/ws/", cookie)
        assert (await ws.connect(timeout=5))[0]
        profile = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return profile, await refused("/ws/alice", cookie)  # the old name is no longer this user's room

    profile, old_room_refused = run(scenario)
    assert profile["profile"]["username"] == "alicia" and profile["profile"]["version"] == 3
    assert old_room_refused


def test_a_legacy_replicas_profile_carries_the_key_its_changes_carry(redis_layer: str) -> None:
    """Pushes of a legacy replica are keyed by the bare username: the page compares their versions."""
    user = replica("gus", "Gus", key="username:gus", version=1764600000000)
    cookie = session_cookie(user)

    async def scenario() -> dict[str, Any]:
        ws = communicator("/ws/gus", cookie)
        assert (await ws.connect(timeout=5))[0]
        first = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return first

    assert run(scenario)["profile"]["key"] == "gus"


def test_refused_without_session_in_another_room_or_from_another_origin(alice: Any, bob: Any) -> None:
    cookie = session_cookie(alice)

    async def scenario() -> dict[str, bool]:
        return {
            "no session": await refused("/ws/alice"),
            "own room by session, no session": await refused("/ws/"),
            "bad session": await refused("/ws/alice", "not-a-session"),
            "bob's room": await refused("/ws/bob", cookie),
            "foreign origin": await refused("/ws/alice", cookie, origin="http://evil.example"),
            "unknown path": await refused("/ws/alice/extra", cookie),
            "clock without session": await refused("/time/tic/"),
            "clock from another origin": await refused("/time/tic/", cookie, origin="http://evil.example"),
        }

    assert run(scenario) == dict.fromkeys(
        [
            "no session",
            "own room by session, no session",
            "bad session",
            "bob's room",
            "foreign origin",
            "unknown path",
            "clock without session",
            "clock from another origin",
        ],
        True,
    )


def test_a_page_of_a_sibling_site_on_the_same_host_is_refused(alice: Any, settings: Any) -> None:
    """`reactive up` serves every site on one host (a port each), and sites may share ALLOWED_HOSTS: the
    host check alone let beta's page (localhost:8002) open alpha's /ws/ (localhost:8000) with the
    browser's cookies for localhost. The Origin must be the socket's own origin (scheme, host, port), as
    Django's CSRF check asks of a form, or a trusted one; a malformed one is refused, not a 500."""
    settings.CSRF_TRUSTED_ORIGINS = ["https://localhost:9443", "https://*.example.com"]
    cookie = session_cookie(alice)
    here = "localhost:8000"  # localhost and 127.0.0.1 are both in ALLOWED_HOSTS

    async def scenario() -> dict[str, bool]:
        return {
            "sibling port": await refused("/ws/", cookie, "http://localhost:8002", here),
            "sibling clock": await refused("/time/tic/", cookie, "http://localhost:8002", here),
            "another allowed host": await refused("/ws/", cookie, "http://127.0.0.1:8000", here),
            "another scheme": await refused("/ws/", cookie, "https://localhost:8000", here),
            "malformed origin": await refused("/ws/", cookie, "http://[::1", here),
            "null origin": await refused("/ws/", cookie, "null", here),
            "no host header": await refused("/ws/", cookie, "http://localhost:8000", ""),
            "own origin": await refused("/ws/", cookie, "http://localhost:8000", here),
            "own origin, default port": await refused("/ws/", cookie, "http://localhost", "localhost"),
            "trusted origin": await refused("/ws/", cookie, "https://localhost:9443", here),
        }

    assert run(scenario) == {
        "sibling port": True,
        "sibling clock": True,
        "another allowed host": True,
        "another scheme": True,
        "malformed origin": True,
        "null origin": True,
        "no host header": True,
        "own origin": False,
        "own origin, default port": False,
        "trusted origin": False,
    }
    # A wildcard entry as Django reads it (the host must still be in ALLOWED_HOSTS for Channels' check).
    scope = {"headers": [(b"origin", b"https://a.example.com"), (b"host", here.encode())]}
    assert origins.same_origin(scope)
    scope["headers"][0] = (b"origin", b"https://a.example.org")
    assert not origins.same_origin(scope)


def test_behind_a_tls_proxy_the_socket_is_https_as_the_proxy_says(alice: Any, settings: Any) -> None:
    """DJANGO_SECURE_PROXY: the proxy's X-Forwarded-Proto is the handshake's scheme, as for forms: a page
    served over https is the socket's own origin, one over plain http (injected on the way) is not."""
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    cookie = session_cookie(alice)
    proxied = ((b"x-forwarded-proto", b"https"),)

    async def scenario() -> dict[str, bool]:
        return {
            "https page": await refused("/ws/", cookie, "https://localhost", "localhost", proxied),
            "http page": await refused("/ws/", cookie, "http://localhost", "localhost", proxied),
        }

    assert run(scenario) == {"https page": False, "http page": True}


@pytest.mark.parametrize("username", ["a.b+c-d@example.com", "x" * 150, "ünïcødé_1"])
def test_any_valid_username_has_a_room(redis_layer: str, username: str) -> None:
    user = replica(username, "Odd", key="21", version=1)
    cookie = session_cookie(user)

    async def scenario() -> dict[str, Any]:
        first, second = await profile_then_change(f"/ws/{username}", cookie, user.pk, {"version": 2})
        return {"first": first, "second": second}

    got = run(scenario)
    assert got["first"]["profile"]["username"] == username
    assert got["second"]["profile"] == {"version": 2}


def test_disconnect_leaves_the_group(alice: Any) -> None:
    cookie = session_cookie(alice)
    left: list[tuple[str, str]] = []

    async def scenario() -> int:
        layer = get_channel_layer()
        original = layer.group_discard

        async def discard(group: str, channel: str) -> None:
            left.append((group, channel))
            await original(group, channel)

        layer.group_discard = discard
        for path in ("/ws/alice", "/time/tic/"):
            ws = communicator(path, cookie)
            assert (await ws.connect(timeout=5))[0]
            await ws.receive_json_from(timeout=5)
            await ws.disconnect()
        return len(broadcast(groups.CLOCK, clock_frame).sockets)

    assert run(scenario) == 0  # the clock socket left this process's fan-out
    assert [group for group, _ in left] == [groups.user_group(alice.pk)]


@pytest.mark.parametrize("gone_at", ["connect", "push"])
def test_a_page_gone_while_its_socket_sends_leaves_the_group(
    alice: Any, monkeypatch: pytest.MonkeyPatch, gone_at: str
) -> None:
    """A page closed while its socket connects or takes a push: the server's send raises (uvicorn's
    ClientDisconnected) out of the consumer, and no disconnect() runs. Its channel leaves the room all
    the same, instead of staying a member for a day, sent every change of the user."""
    from uvicorn.protocols.utils import ClientDisconnected

    cookie = session_cookie(alice)
    group = groups.user_group(alice.pk)
    real_send = consumers.UserConsumer.send_json

    async def send_to_a_gone_page(self: Any, content: Any, close: bool = False) -> None:
        if gone_at == "connect" or content.get("type") == groups.USER_CHANGED:
            raise ClientDisconnected
        await real_send(self, content, close)

    monkeypatch.setattr(consumers.UserConsumer, "send_json", send_to_a_gone_page)

    async def scenario() -> tuple[set[str], set[str]]:
        layer = get_channel_layer()
        ws = communicator("/ws/", cookie)
        assert (await ws.connect(timeout=5))[0]
        if gone_at == "push":
            await ws.receive_json_from(timeout=5)
            change = {"key": "17", "version": 4, "username": "alice", "first_name": "Alicia"}
            await groups.send(group, {"type": groups.USER_CHANGED, "profile": change})
        joined = await group_members(layer, group)
        with pytest.raises(ClientDisconnected):
            await ws.receive_output(timeout=5)
        await until(lambda: not leavers.leavers().waiting, what="the channel left")
        return joined, await group_members(layer, group)

    joined, members = run(scenario)
    assert len(joined) == 1 and members == set()


def test_a_clock_page_gone_while_its_socket_connects_leaves_the_fan_out(
    alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uvicorn.protocols.utils import ClientDisconnected

    async def send_to_a_gone_page(self: Any, content: Any, close: bool = False) -> None:
        raise ClientDisconnected

    monkeypatch.setattr(consumers.ClockConsumer, "send_json", send_to_a_gone_page)
    cookie = session_cookie(alice)

    async def scenario() -> int:
        ws = communicator("/time/tic/", cookie)
        assert (await ws.connect(timeout=5))[0]
        with pytest.raises(ClientDisconnected):
            await ws.receive_output(timeout=5)
        return len(broadcast(groups.CLOCK, clock_frame).sockets)

    assert run(scenario) == 0


def test_an_older_push_is_dropped_and_an_outdated_disable_ends_nothing(alice: Any) -> None:
    """Pushes can cross (two listeners of one client): alice is active at v7 when a late v6 that said
    "disabled" arrives. The socket drops it, as the page would, and stays open; a newer one still ends it."""
    cookie = session_cookie(alice)
    group = groups.user_group(alice.pk)

    async def scenario() -> tuple[bool, dict[str, Any]]:
        ws = await in_room(cookie)  # v3
        current = {"key": "17", "version": 7, "username": "alice", "is_active": True}
        await groups.send(group, {"type": groups.USER_CHANGED, "profile": current})
        await ws.receive_json_from(timeout=5)
        outdated = {"key": "17", "version": 6, "username": "alice", "is_active": False}
        await groups.send(group, {"type": groups.USER_CHANGED, "profile": outdated})
        quiet = await ws.receive_nothing(timeout=0.3)
        disabled = {"key": "17", "version": 8, "username": "alice", "is_active": False}
        await groups.send(group, {"type": groups.USER_CHANGED, "profile": disabled})
        await ws.receive_json_from(timeout=5)
        return quiet, await ws.receive_output(timeout=5)

    quiet, closed = run(scenario)
    assert quiet, "the outdated push was sent to the page"
    assert closed == {"type": "websocket.close", "code": consumers.CLOSE_ACCOUNT_DISABLED}


def test_a_disable_undone_while_the_socket_connects_leaves_it_open(
    alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the join and the profile read, alice is disabled (v6, pushed to her room, which the socket
    is in) and enabled again (v7): the socket sends v7 and drops the queued v6; it does not close."""
    from asgiref.sync import async_to_sync

    real = consumers.profile_by_pk

    def read_while_changes_land(pk: Any) -> Any:
        off = {"key": "17", "version": 6, "username": "alice", "is_active": False}
        async_to_sync(groups.send)(groups.user_group(pk), {"type": groups.USER_CHANGED, "profile": off})
        ReplicaState.objects.filter(key="17").update(version=7)  # enabled again, committed
        return real(pk)

    monkeypatch.setattr(consumers, "profile_by_pk", read_while_changes_land)
    cookie = session_cookie(alice)

    async def scenario() -> tuple[dict[str, Any], bool]:
        ws = communicator("/ws/", cookie)
        assert (await ws.connect(timeout=5))[0]
        profile = await ws.receive_json_from(timeout=5)
        return profile, await ws.receive_nothing(timeout=0.5)

    profile, quiet = run(scenario)
    assert profile["profile"]["version"] == 7 and profile["profile"]["is_active"] is True
    assert quiet, "the outdated disable reached the page (or closed the socket)"


def test_a_layer_message_of_a_type_this_process_does_not_know_is_dropped(alice: Any) -> None:
    """During a rolling deploy newer processes send types older ones have no handler for (a sign-out's
    session.ended, once): Channels ended the socket with 1011 for it. It is dropped, the socket goes on."""
    cookie = session_cookie(alice)
    group = groups.user_group(alice.pk)

    async def scenario() -> dict[str, Any]:
        ws = await in_room(cookie)
        await groups.send(group, {"type": "something.newer", "what": "a later version's message"})
        change = {"key": "17", "version": 4, "username": "alice", "first_name": "Alicia"}
        await groups.send(group, {"type": groups.USER_CHANGED, "profile": change})
        after: dict[str, Any] = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return after

    assert run(scenario)["profile"]["first_name"] == "Alicia"


def test_signing_out_ends_that_sessions_sockets_and_no_other(alice: Any) -> None:
    """Pages left open in other tabs of a session that signed out get nothing more: their user and clock
    sockets close with 4001 (not final: the page reconnects and, refused, shows it is signed out). The
    same user's sockets in another browser go on."""
    from django.test import Client

    signed_out, elsewhere = session_cookie(alice), session_cookie(alice)
    session_closed = {"type": "websocket.close", "code": consumers.CLOSE_SESSION_CHANGED}

    def sign_out() -> int:
        browser = Client()
        browser.cookies["sessionid"] = signed_out
        browser.post("/logout/")
        return browser.get("/api/initial_state").status_code

    async def scenario() -> tuple[int, list[dict[str, Any]], dict[str, Any], bool]:
        mine, other = await in_room(signed_out), await in_room(elsewhere)
        my_clock, other_clock = await on_clock(signed_out), await on_clock(elsewhere)
        status = await database_sync_to_async(sign_out)()
        closed = [await mine.receive_output(timeout=5), await until_closed(my_clock)]
        change = {"key": "17", "version": 4, "username": "alice", "first_name": "Alicia"}
        await groups.send(groups.user_group(alice.pk), {"type": groups.USER_CHANGED, "profile": change})
        pushed = await other.receive_json_from(timeout=5)
        tick = await clock.atick()
        ticks = await other_clock.receive_json_from(timeout=5) == clock.message(tick)
        await other.disconnect()
        await other_clock.disconnect()
        return status, closed, pushed, ticks

    status, closed, pushed, ticks = run(scenario)
    assert status == 401
    assert closed == [session_closed, session_closed]
    assert pushed["profile"]["first_name"] == "Alicia"
    assert ticks


def test_a_local_account_taken_over_by_a_replica_ends_its_socket_unsent(
    redis_layer: str, memory: Any
) -> None:
    """carol is a local account of alpha with a page open. The master's carol (key 30) is synced: the
    listener adopts the row and makes its password unusable, which signs that session out. Its socket
    closes instead of being sent the master user's profile."""
    from django.test import Client

    local = get_user_model().objects.create_user("carol", password="local-secret", email="local@alpha")
    cookie = session_cookie(local)
    data = {"username": "carol", "first_name": "Carol", "email": "master-carol@corp", "is_active": True}
    event = Event(model="auth.user", action="insert", key="30", version=9, data=data, changed=tuple(data))
    memory.publish([OutgoingMessage(id="1", body=encode(event))])

    async def scenario() -> dict[str, Any]:
        ws = await in_room(cookie)
        listener = Listener("alpha", memory, wait=0)
        assert (await database_sync_to_async(listener.run)(once=True)).applied == 1
        return dict(await ws.receive_output(timeout=5))

    sent = run(scenario)
    browser = Client()
    browser.cookies["sessionid"] = cookie
    assert browser.get("/api/initial_state").status_code == 401  # HTTP: that session is over
    assert sent == {"type": "websocket.close", "code": consumers.CLOSE_SESSION_CHANGED}


def test_clock_sockets_of_a_process_share_one_group_membership(alice: Any) -> None:
    """One layer channel and one membership for the process; a clock socket has no channel of its own."""
    cookie = session_cookie(alice)
    joined: list[str] = []
    channels: list[str] = []

    async def scenario() -> list[dict[str, Any]]:
        layer = get_channel_layer()
        original, original_new_channel = layer.group_add, layer.new_channel

        async def add(group: str, channel: str) -> None:
            joined.append(group)
            await original(group, channel)

        async def new_channel(*args: Any, **kwargs: Any) -> str:
            channels.append(await original_new_channel(*args, **kwargs))
            return channels[-1]

        layer.group_add, layer.new_channel = add, new_channel
        sockets = [communicator("/time/tic/", cookie) for _ in range(3)]
        for ws in sockets:
            assert (await ws.connect(timeout=5))[0]
            await ws.receive_json_from(timeout=5)
        tick = await clock.atick()
        received = await asyncio.gather(*(ws.receive_json_from(timeout=5) for ws in sockets))
        for ws in sockets:
            await ws.disconnect()
        assert all(message == clock.message(tick) for message in received)
        return list(received)

    assert len(run(scenario)) == 3
    assert joined.count(groups.CLOCK) == 1
    assert len(channels) == 1


def test_clock_sends_the_stored_time_at_once_then_each_tick(alice: Any) -> None:
    cookie = session_cookie(alice)
    stored = {"time": "03:04:05", "iso": "2026-01-02T03:04:05.678+00:00"}
    clock._redis().set(clock.state_key(), json.dumps(stored), ex=clock.STATE_TTL_SECONDS)  # the beat's

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        ws = communicator("/time/tic/", cookie)
        assert (await ws.connect(timeout=5))[0]
        first = await ws.receive_json_from(timeout=5)
        tick = await clock.atick()
        second = await ws.receive_json_from(timeout=5)
        assert second == clock.message(tick)
        await ws.disconnect()
        return first, second

    first, _ = run(scenario)
    assert first == {"type": "clock.tick", **stored}


# What a client may send on a socket that only sends: junk, bytes, and a message dressed as a server event.
CLIENT_FRAMES = [
    {"text_data": "not json {"},
    {"bytes_data": b"\x00\xff"},
    {"text_data": json.dumps({"type": "user.changed", "profile": {"first_name": "Mallory"}})},
    {"text_data": json.dumps({"type": "websocket.disconnect", "code": 1000})},
]


@pytest.mark.parametrize("path", ["/ws/", "/time/tic/"])
def test_what_a_client_sends_is_ignored_and_its_socket_goes_on(
    alice: Any, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The sockets only send: a page never sends a frame. Whatever a client sends is dropped, without an
    error, a traceback or a dispatch, and the socket still gets what the server sends next."""
    cookie = session_cookie(alice)
    caplog.set_level(logging.WARNING)

    async def scenario() -> dict[str, Any]:
        ws = communicator(path, cookie)
        assert (await ws.connect(timeout=5))[0]
        await ws.receive_json_from(timeout=5)
        for frame in CLIENT_FRAMES:
            await ws.send_to(**frame)
        assert await ws.receive_nothing(timeout=0.3)  # nothing back: no echo, no close, no dispatch
        if path == "/ws/":
            change = {"key": "17", "version": 4, "username": "alice", "first_name": "Alicia"}
            await groups.send(groups.user_group(alice.pk), {"type": groups.USER_CHANGED, "profile": change})
        else:
            await clock.atick()
        after: dict[str, Any] = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return after

    after = run(scenario)
    assert after["type"] == ("user.changed" if path == "/ws/" else "clock.tick")
    if path == "/ws/":
        assert after["profile"]["first_name"] == "Alicia"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def ended_on_master(how: str) -> Event:
    """Alice's account (master key 17, at version 3 here) disabled or deleted on the master."""
    if how == "deleted":
        return Event(model="auth.user", action="delete", key="17", version=4)
    data = {"username": "alice", "first_name": "Alice", "is_active": False}
    return Event(model="auth.user", action="update", key="17", version=4, data=data, changed=("is_active",))


@pytest.mark.parametrize(("how", "code"), [("disabled", 4003), ("deleted", 4004)])
def test_the_clock_sockets_of_an_account_that_ended_close_and_others_tick_on(
    alice: Any, bob: Any, memory: Any, how: str, code: int
) -> None:
    """The listener applies the end and notifies: alice's clock sockets close with the code her user
    socket gets, though she has none open in this process; bob's clock keeps ticking."""
    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)
    memory.publish([OutgoingMessage(id="1", body=encode(ended_on_master(how)))])

    async def scenario() -> tuple[list[dict[str, Any]], bool, list[bool], int]:
        alices = [await on_clock(alice_cookie) for _ in range(2)]
        bobs = await on_clock(bob_cookie)
        listener = Listener("alpha", memory, wait=0)  # its notify: groups.notify_profiles, on Redis
        assert (await database_sync_to_async(listener.run)(once=True)).applied == 1
        closed = [await ws.receive_output(timeout=5) for ws in alices]
        tick = await clock.atick()
        bob_ticks = await bobs.receive_json_from(timeout=5) == clock.message(tick)
        quiet = [await ws.receive_nothing(timeout=0.3) for ws in alices]
        open_sockets = len(broadcast(groups.CLOCK, clock_frame).sockets)
        for ws in (*alices, bobs):
            await ws.disconnect()
        return closed, bob_ticks, quiet, open_sockets

    closed, bob_ticks, quiet, open_sockets = run(scenario)
    assert closed == [{"type": "websocket.close", "code": code}] * 2
    assert bob_ticks
    assert quiet == [True, True]  # no tick after the close
    assert open_sockets == 1  # bob's


def disable(user: Any) -> None:
    user.is_active = False
    user.save()


async def until_closed(ws: WebsocketCommunicator) -> dict[str, Any]:
    """Skip the frames before the close (the time sent on connect, ticks), and return the close."""
    while True:
        output = await ws.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return dict(output)


def test_an_end_lost_with_redis_data_closes_the_clock_sockets_at_the_rejoin(
    alice: Any, bob: Any, redis_url: str, losses_fast: None
) -> None:
    """Alice was disabled while Redis had lost the fan-out's memberships (or was down when the listener
    announced it): the end reached no one. Rejoining, the fan-out asks the database about its sockets'
    users: alice's clock closes with her user socket's code, bob's ticks on."""
    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)

    async def scenario() -> tuple[dict[str, Any], bool, int]:
        alices, bobs = await on_clock(alice_cookie), await on_clock(bob_cookie)
        await database_sync_to_async(disable)(alice)  # announced to nobody
        quiet = await alices.receive_nothing(timeout=0.3)
        assert quiet, "closed before any rejoin: the test no longer shows the rejoin's check"
        watch = await epoch_key_placed(redis_url)
        redis.Redis.from_url(redis_url).delete(watch.key)  # what FLUSHALL does to it, and to every group
        closed = await until_closed(alices)
        tick = await clock.atick()
        bob_ticks = await bobs.receive_json_from(timeout=5) == clock.message(tick)
        open_sockets = len(broadcast(groups.CLOCK, clock_frame).sockets)
        for ws in (alices, bobs):
            await ws.disconnect()
        return closed, bob_ticks, open_sockets

    closed, bob_ticks, open_sockets = run(scenario)
    assert closed == {"type": "websocket.close", "code": 4003}
    assert bob_ticks and open_sockets == 1


def test_an_end_whose_push_was_lost_closes_the_clock_sockets_at_a_re_add_round(
    alice: Any, bob: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener committed alice's disable and was killed before its push (or was cut off from Redis
    alone): the web process saw no loss. The fan-out's next re-add round asks the database about its
    sockets' users all the same: alice's clock closes with her user socket's code, bob's ticks on."""
    from client_site.web import broadcast as fanout

    monkeypatch.setattr(fanout, "REJOIN_SECONDS", 0.1)
    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)

    async def scenario() -> tuple[dict[str, Any], bool]:
        alices, bobs = await on_clock(alice_cookie), await on_clock(bob_cookie)
        await database_sync_to_async(disable)(alice)  # announced to nobody
        closed = await until_closed(alices)
        tick = await clock.atick()
        bob_ticks = await bobs.receive_json_from(timeout=5) == clock.message(tick)
        await bobs.disconnect()
        return closed, bob_ticks

    closed, bob_ticks = run(scenario)
    assert closed == {"type": "websocket.close", "code": 4003}
    assert bob_ticks


@pytest.mark.parametrize("still_ended", [True, False])
def test_a_clock_socket_let_in_just_before_its_account_ended_is_closed(
    alice: Any, monkeypatch: pytest.MonkeyPatch, still_ended: bool
) -> None:
    """The handshake read alice's account before her end committed; the end came before her socket was
    in the fan-out, so it closed nothing. Joining within RECENT_END_SECONDS of an end of its user, the
    socket is checked against the database: closed if the account is still ended, left open if it was
    enabled again since."""
    cookie = session_cookie(alice)
    read_before_the_end = alice
    monkeypatch.setattr(consumers, "_authenticated_user", lambda scope: read_before_the_end)

    async def scenario() -> dict[str, Any] | None:
        await on_clock(cookie)  # the process is in the ends group
        if still_ended:
            await database_sync_to_async(disable)(alice)
        await groups.send(groups.ENDED_ACCOUNTS, groups.ended_message(alice.pk, groups.DISABLED))
        await until(lambda: broadcast(groups.CLOCK, clock_frame).recent_ends, what="the end received")
        late = communicator("/time/tic/", cookie)
        assert (await late.connect(timeout=5))[0]
        if not still_ended:
            assert await late.receive_json_from(timeout=5)  # the time, then nothing more than ticks
            stays = await late.receive_nothing(timeout=0.5)
            await late.disconnect()
            return None if stays else {"closed": True}
        return await until_closed(late)

    assert run(scenario) == ({"type": "websocket.close", "code": 4003} if still_ended else None)


def test_a_change_the_layer_did_not_take_reaches_the_open_page_once_redis_is_back(
    alice: Any, memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener commits alice's rename while its Redis is out: the push fails. Redis back, the
    listener's next round sends it again, and her open page shows the new name without a reload."""
    cookie = session_cookie(alice)
    real_send, out = groups.send, {"now": True}

    async def send_unless_out(group: str, message: Any) -> None:
        if out["now"]:
            raise redis.ConnectionError("Error 111 connecting to redis. Connection refused.")
        await real_send(group, message)

    monkeypatch.setattr(groups, "send", send_unless_out)
    rename = Event(model="auth.user", action="update", key="17", version=4, data={"first_name": "Alicia"})
    memory.publish([OutgoingMessage(id="1", body=encode(rename))])
    listener = Listener("alpha", memory, wait=0)  # the real notify: groups.notify_profiles

    async def scenario() -> tuple[bool, dict[str, Any]]:
        ws = await in_room(cookie)
        assert (await database_sync_to_async(listener.poll)()).applied == 1
        missed = await ws.receive_nothing(timeout=0.3)
        out["now"] = False
        await database_sync_to_async(listener.unnotified.send)()  # what the loop does before each poll
        pushed = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return missed, pushed

    missed, pushed = run(scenario)
    assert missed
    assert pushed["type"] == groups.USER_CHANGED
    assert pushed["profile"]["first_name"] == "Alicia" and pushed["profile"]["version"] == 4


def test_a_group_send_reaches_every_socket_in_the_room(alice: Any) -> None:
    cookie = session_cookie(alice)

    async def scenario() -> list[dict[str, Any]]:
        sockets = [communicator("/ws/alice", cookie) for _ in range(3)]
        for ws in sockets:
            assert (await ws.connect(timeout=5))[0]
            await ws.receive_json_from(timeout=5)
        await groups.send(
            groups.user_group(alice.pk), {"type": groups.USER_CHANGED, "profile": {"version": 9}}
        )
        received = await asyncio.gather(*(ws.receive_json_from(timeout=5) for ws in sockets))
        for ws in sockets:
            await ws.disconnect()
        return list(received)

    assert [m["profile"]["version"] for m in run(scenario)] == [9, 9, 9]


def test_a_reconnect_storm_is_admitted(redis_layer: str) -> None:
    """Hundreds of pages coming back at once (a server restart) each join the clock group concurrently."""

    async def scenario() -> int:
        layer = get_channel_layer()
        channels = [await layer.new_channel() for _ in range(300)]
        await asyncio.gather(*(layer.group_add(groups.CLOCK, channel) for channel in channels))
        await asyncio.gather(*(layer.group_discard(groups.CLOCK, channel) for channel in channels))
        return len(channels)

    assert run(scenario) == 300


class Joins:
    """The layer's group_add, recorded, and made to fail or hang on demand (Redis restarting or stalled)."""

    def __init__(self, layer: Any) -> None:
        self.original = layer.group_add
        self.calls: list[tuple[str, str]] = []
        self.failures = 0
        self.fail_next = 0  # calls to fail, as a pooled connection Redis closed does
        self.down = False  # every call fails
        self.stalled = False  # every call hangs
        layer.group_add = self

    async def __call__(self, group: str, channel: str) -> None:
        self.calls.append((group, channel))
        if self.stalled:
            await asyncio.Event().wait()
        if self.down or self.fail_next:
            self.fail_next = max(0, self.fail_next - 1)
            self.failures += 1
            raise redis.ConnectionError("Connection closed by server.")
        await self.original(group, channel)


def membership_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("membership ")]


def discard_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("discard ")]


@pytest.fixture
def refresh_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumers, "MEMBERSHIP_REFRESH_SECONDS", 0.05, raising=False)
    monkeypatch.setattr(
        consumers,
        "_membership_failures",
        FailureStreak("user sockets: memberships", logging.getLogger("reactive.web")),
        raising=False,
    )


def test_an_open_socket_rejoins_its_room_after_redis_forgot_it(alice: Any, refresh_fast: None) -> None:
    """Redis forgets members after group_expiry, and all of them when it loses its data (FLUSHALL, a
    failover): an open page re-adds itself, and gets the changes again; its re-adds end with it."""
    cookie = session_cookie(alice)

    async def scenario() -> dict[str, Any]:
        layer = get_channel_layer()
        joins = Joins(layer)
        ws = await in_room(cookie)
        group, channel = joins.calls[0]
        await layer.group_discard(group, channel)  # what Redis did behind the consumer's back
        forgotten = len(joins.calls)
        await until(lambda: len(joins.calls) >= forgotten + 2, what="re-added to the room")  # one done
        change = {"key": "17", "version": 4, "username": "alice", "first_name": "Alicia"}
        await groups.send(group, {"type": groups.USER_CHANGED, "profile": change})
        received = await ws.receive_json_from(timeout=5)
        tasks = len(membership_tasks())
        await ws.disconnect()
        await until(lambda: not membership_tasks(), what="the re-adds ended with the socket")
        return {"received": received, "tasks": tasks}

    got = run(scenario)
    assert got["received"]["profile"]["first_name"] == "Alicia"
    assert got["tasks"] == 1  # while open


@pytest.fixture
def losses_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(epochs, "EPOCH_CHECK_SECONDS", 0.05)
    monkeypatch.setattr(consumers, "LOSS_SPREAD_SECONDS", 0.05)
    monkeypatch.setattr(freshness, "AFTER_LOSS_SECONDS", 0.1)


def test_a_change_missed_while_redis_lost_its_data_is_sent_after_the_rejoin(
    alice: Any, redis_url: str, refresh_fast: None, losses_fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis lost its data (FLUSHALL, a failover): the push of a change made meanwhile reached no one.
    The page gets the profile again, once; rounds without a loss read nothing from the database."""
    cookie = session_cookie(alice)
    reads: list[Any] = []
    real_read = consumers.profile_by_pk
    monkeypatch.setattr(consumers, "profile_by_pk", lambda pk: reads.append(pk) or real_read(pk))

    async def scenario() -> tuple[bool, int, dict[str, Any], bool]:
        ws = await in_room(cookie)
        unchanged_quiet = await ws.receive_nothing(timeout=0.4)  # several rounds
        reads_between_losses = len(reads) - 1  # the one on connect
        await database_sync_to_async(change_unannounced)(alice, "renamed")
        watch = await epoch_key_placed(redis_url)
        redis.Redis.from_url(redis_url).delete(watch.key)  # what FLUSHALL does to it, and to every group
        resent = await ws.receive_json_from(timeout=5)
        then_quiet = await ws.receive_nothing(timeout=0.4)
        await ws.disconnect()
        return unchanged_quiet, reads_between_losses, resent, then_quiet

    unchanged_quiet, reads_between_losses, resent, then_quiet = run(scenario)
    assert unchanged_quiet and reads_between_losses == 0
    assert resent["type"] == "profile"
    assert resent["profile"]["first_name"] == "Alicia" and resent["profile"]["version"] == 4
    assert then_quiet


@pytest.fixture
def watch_through_proxy(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    """The epoch watch reaches Redis through a proxy that can be cut (the layer keeps its own way)."""
    url = urlparse(redis_url)
    proxy = Proxy(target_port=url.port or 6379, port=free_port())
    proxy.up()
    monkeypatch.setenv("REDIS_URL", url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl())
    yield proxy
    proxy.down()


def change_unannounced(user: Any, change: str) -> None:
    """What the replica commits for alice (key 17) while her push is lost: "renamed" or "removed"."""
    if change == "renamed":
        user.first_name = "Alicia"
        user.save()
        ReplicaState.objects.filter(key="17").update(version=4)
    else:
        delete_unannounced(user)


def delete_unannounced(user: Any) -> None:  # what the replica does for a delete, its push lost
    with transaction.atomic():
        ReplicaState.objects.filter(key="17").update(version=4, deleted=True, local_pk=None)
        user.delete()


async def epoch_key_placed(redis_url: str) -> epochs.RedisEpochs:
    """This loop's epoch watch, once its key is in Redis (so that its loss, or its reach, can be taken)."""
    watch = epochs.redis_epochs()
    await until(lambda: watch.task is not None and bool(redis.Redis.from_url(redis_url).exists(watch.key)))
    return watch


@pytest.mark.parametrize("change", ["renamed", "removed"])
def test_a_change_missed_while_redis_was_out_of_reach_reaches_the_open_page_once_it_answers(
    alice: Any,
    change: str,
    redis_url: str,
    watch_through_proxy: Proxy,
    refresh_fast: None,
    losses_fast: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis out of reach, its data kept: the listener's push of a change made meanwhile went nowhere, and
    a listener that stopped before Redis came back will not send it again. Once Redis answers, the page
    gets the profile (for a removed account: removed, then the socket's end)."""
    cookie = session_cookie(alice)

    async def scenario() -> tuple[bool, dict[str, Any], dict[str, Any]]:
        ws = await in_room(cookie)
        await epoch_key_placed(redis_url)
        watch_through_proxy.down()
        await until(lambda: epoch_checks(caplog) > 0, what="the watch found Redis out of reach")
        quiet_while_out = await ws.receive_nothing(timeout=0.3)
        await database_sync_to_async(change_unannounced)(alice, change)
        watch_through_proxy.up()
        resent = await ws.receive_json_from(timeout=5)
        after = await ws.receive_output(timeout=5) if change == "removed" else {}
        await ws.disconnect()
        return quiet_while_out, resent, after

    with caplog.at_level(logging.DEBUG, logger="reactive.web"):
        quiet_while_out, resent, after = run(scenario)
    assert quiet_while_out
    assert resent["type"] == "profile"
    if change == "renamed":
        assert resent["profile"]["first_name"] == "Alicia" and resent["profile"]["version"] == 4
    else:
        assert resent["profile"] == {"key": "17", "version": 3, "deleted": True}
        assert after == {"type": "websocket.close", "code": consumers.CLOSE_ACCOUNT_REMOVED}
    assert (
        "INFO",
        "Redis answers again: the sockets rejoin their groups and catch up with the replica",
    ) in web_log(caplog)


def epoch_checks(caplog: pytest.LogCaptureFixture) -> int:
    """How many of the epoch watch's checks failed so far."""
    return sum(1 for r in caplog.records if r.getMessage().startswith("redis epochs: "))


def test_an_account_the_replica_removed_during_the_handshake_ends_the_page(
    alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session was read, then the listener removed the user (its push came before the join): the
    socket says so and ends, rather than staying open with nothing to show."""
    cookie = session_cookie(alice)
    monkeypatch.setattr(consumers, "profile_by_pk", lambda pk: None)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        ws = communicator("/ws/", cookie)
        assert (await ws.connect(timeout=5))[0]
        return await ws.receive_json_from(timeout=5), dict(await ws.receive_output(timeout=5))

    said, closed = run(scenario)
    assert said == {"type": "profile", "profile": {"key": "", "version": 0, "deleted": True}}
    assert closed == {"type": "websocket.close", "code": consumers.CLOSE_ACCOUNT_REMOVED}


def test_an_account_removed_while_redis_lost_its_data_ends_the_page_at_the_rejoin(
    alice: Any, redis_url: str, refresh_fast: None, losses_fast: None
) -> None:
    cookie = session_cookie(alice)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        ws = await in_room(cookie)
        await database_sync_to_async(delete_unannounced)(alice)
        watch = await epoch_key_placed(redis_url)
        redis.Redis.from_url(redis_url).delete(watch.key)
        resent = await ws.receive_json_from(timeout=5)
        return resent, await ws.receive_output(timeout=5)

    resent, closed = run(scenario)
    assert resent == {"type": "profile", "profile": {"key": "17", "version": 3, "deleted": True}}
    assert closed == {"type": "websocket.close", "code": consumers.CLOSE_ACCOUNT_REMOVED}


@pytest.fixture
def checks_fast(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The freshness check every 0.1 s; returns the users each of its queries asked about."""
    asked: list[list[str]] = []
    real = freshness.replica_versions
    monkeypatch.setattr(freshness, "CHECK_SECONDS", 0.1)
    monkeypatch.setattr(freshness, "replica_versions", lambda pks: asked.append(sorted(pks)) or real(pks))
    return asked


@pytest.mark.parametrize("change", ["renamed", "removed"])
def test_a_change_whose_push_was_lost_reaches_the_open_page_at_the_next_check(
    alice: Any, bob: Any, change: str, checks_fast: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis saw nothing wrong, yet the push never came (a listener killed between its commit and its
    send, or cut off from Redis alone). The page gets the profile at the next check: one query for every
    socket of the process, then one for the profiles of the users behind."""
    reads: list[Any] = []
    real_read, real_reads = consumers.profile_by_pk, freshness.profiles_by_pk
    monkeypatch.setattr(consumers, "profile_by_pk", lambda pk: reads.append(str(pk)) or real_read(pk))
    monkeypatch.setattr(freshness, "profiles_by_pk", lambda pks: reads.append(list(pks)) or real_reads(pks))

    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)
    alice_pk, bob_pk = str(alice.pk), str(bob.pk)  # a delete clears alice.pk
    asked: list[list[str]] = []  # by the checks once every socket was open

    async def scenario() -> tuple[bool, dict[str, Any], dict[str, Any], bool]:
        alices = [await in_room(alice_cookie) for _ in range(2)]
        bobs = await in_room(bob_cookie)
        asked_before = len(checks_fast)
        await until(lambda: len(checks_fast) >= asked_before + 2, what="two checks")
        asked.extend(checks_fast[asked_before:])
        quiet = all([await ws.receive_nothing(timeout=0.3) for ws in (*alices, bobs)])
        await database_sync_to_async(change_unannounced)(alice, change)
        resent = [await ws.receive_json_from(timeout=5) for ws in alices]
        assert resent[0] == resent[1]
        after = await alices[0].receive_output(timeout=5) if change == "removed" else {}
        bob_quiet = await bobs.receive_nothing(timeout=0.3)
        await bobs.disconnect()
        if change == "renamed":
            for ws in alices:
                await ws.disconnect()
        return quiet, resent[0], after, bob_quiet

    quiet, resent, after, bob_quiet = run(scenario)
    assert quiet and bob_quiet
    assert asked and all(users == sorted([alice_pk, bob_pk]) for users in asked)
    assert reads == [alice_pk, alice_pk, bob_pk, [alice_pk]]  # on connect, then alice's (two sockets)
    assert resent["type"] == "profile"
    if change == "renamed":
        assert resent["profile"]["first_name"] == "Alicia" and resent["profile"]["version"] == 4
    else:
        assert resent["profile"] == {"key": "17", "version": 3, "deleted": True}
        assert after == {"type": "websocket.close", "code": consumers.CLOSE_ACCOUNT_REMOVED}


@pytest.mark.parametrize("change", ["disabled", "deleted"])
def test_a_local_account_ended_in_this_sites_admin_closes_its_open_page_at_the_next_check(
    redis_layer: str, bob: Any, change: str, checks_fast: list[list[str]]
) -> None:
    """carol is alpha's own account (no master user, no version, no push). Disabled or deleted in alpha's
    admin, her open page is told and its socket closed like a replica's, at the next check; bob's stays."""
    carol = get_user_model().objects.create_user("carol", password="local-secret")
    carol_cookie, bob_cookie = session_cookie(carol), session_cookie(bob)

    def end_carol() -> None:
        if change == "disabled":
            carol.is_active = False
            carol.save()
        else:
            carol.delete()

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], bool]:
        carols, bobs = await in_room(carol_cookie), await in_room(bob_cookie)
        await database_sync_to_async(end_carol)()
        told = await carols.receive_json_from(timeout=5)
        closed = await carols.receive_output(timeout=5)
        bob_quiet = await bobs.receive_nothing(timeout=0.5)
        await bobs.disconnect()
        return told, closed, bob_quiet

    told, closed, bob_quiet = run(scenario)
    assert told["type"] == "profile" and told["profile"]["key"] == ""
    if change == "disabled":
        assert told["profile"]["is_active"] is False
        assert closed == {"type": "websocket.close", "code": consumers.CLOSE_ACCOUNT_DISABLED}
    else:
        assert told["profile"] == {"key": "", "version": 0, "deleted": True}
        assert closed == {"type": "websocket.close", "code": consumers.CLOSE_ACCOUNT_REMOVED}
    assert bob_quiet


def test_an_open_user_socket_is_sent_a_heartbeat_now_and_then(
    alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's watchdog reconnects a socket that hears nothing for three heartbeats (user.js)."""
    monkeypatch.setattr(freshness, "HEARTBEAT_SECONDS", 0.1)
    cookie = session_cookie(alice)

    async def scenario() -> list[dict[str, Any]]:
        ws = await in_room(cookie)
        frames = [await ws.receive_json_from(timeout=5) for _ in range(2)]
        await ws.disconnect()
        return frames

    assert run(scenario) == [consumers.HEARTBEAT_FRAME] * 2


def test_the_check_stops_with_the_last_socket_and_a_database_outage_is_one_warning(
    alice: Any,
    checks_fast: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = {"now": True}
    real = freshness.replica_versions

    def unless_down(pks: list[str]) -> dict[str, tuple[str, int]]:
        if down["now"]:
            raise OperationalError("connection refused")
        return real(pks)

    monkeypatch.setattr(freshness, "replica_versions", unless_down)
    cookie = session_cookie(alice)

    async def scenario() -> bool:
        ws = await in_room(cookie)
        watch = freshness.freshness()
        await until(lambda: watch.failures.failing, what="a failed check")
        down["now"] = False
        await until(lambda: not watch.failures.failing, what="a check that worked")
        lives = await ws.receive_nothing(timeout=0.3)
        task = watch.task
        await ws.disconnect()
        await until(lambda: task is not None and task.done(), what="the check ended with the socket")
        return lives

    with caplog.at_level(logging.INFO, logger="reactive.web"):
        assert run(scenario)
    assert web_log(caplog) == [
        (
            "WARNING",
            "user sockets: checking their profiles against the replica failed: OperationalError: "
            "connection refused; retrying, silently until it works",
        ),
        ("INFO", "user sockets: checking their profiles against the replica works again"),
    ]


@pytest.fixture
def layer_through_proxy(
    redis_layer: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> Iterator[Proxy]:
    """The whole site (channel layer and epoch watch) reaches Redis through a proxy that can be cut."""
    from channels.layers import channel_layers

    from reactive import settings as reactive_settings

    url = urlparse(redis_url)
    proxy = Proxy(target_port=url.port or 6379, port=free_port())
    proxy.up()
    monkeypatch.setenv("REDIS_URL", url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl())
    settings.CHANNEL_LAYERS = reactive_settings.channel_layers("alpha")
    channel_layers.backends.clear()
    yield proxy
    proxy.down()
    channel_layers.backends.clear()


def test_redis_going_away_under_open_sockets_is_one_warning_and_no_traceback(
    alice: Any, bob: Any, redis_layer: str, layer_through_proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    """On the default layer the sockets' receives fail: each socket closes with 1013 (try again later), which
    the page answers by reconnecting. The pub/sub layer reconnects by itself: its sockets stay open (its own
    connection's failures channels-redis logs itself)."""
    cookies = [session_cookie(alice), session_cookie(bob)]

    async def scenario() -> list[dict[str, Any] | None]:
        sockets = [await in_room(cookie) for cookie in cookies]
        layer_through_proxy.down()
        outcomes: list[dict[str, Any] | None] = []
        for ws in sockets:
            if redis_layer == "redis":
                outcomes.append(dict(await ws.receive_output(timeout=10)))
            else:
                outcomes.append(None if await ws.receive_nothing(timeout=1) else {"unexpected": True})
                await ws.disconnect()
        waiting = leavers.leavers().waiting
        draining = [
            t for t in asyncio.all_tasks() if t.get_name() in ("leaving groups",) or t in discard_tasks()
        ]
        assert len(waiting) == (2 if redis_layer == "redis" else 0) and len(draining) <= 1  # one worker
        layer_through_proxy.up()
        layer = get_channel_layer()
        await until(lambda: not waiting, timeout=10, what="the closed sockets' channels left")
        for user in (alice, bob):
            assert await group_members(layer, groups.user_group(user.pk)) == set()
        return outcomes

    with caplog.at_level(logging.INFO, logger="reactive.web"):
        outcomes = run(scenario)
    if redis_layer == "redis":
        assert outcomes == [{"type": "websocket.close", "code": consumers.CLOSE_TRY_AGAIN_LATER}] * 2
        receives = [m for lvl, m in web_log(caplog) if "receiving from the channel layer" in m]
        assert len(receives) == 1 and receives[0].startswith(
            "user sockets: receiving from the channel layer failed: ConnectionError: "
        ), web_log(caplog)
    else:
        assert outcomes == [None, None]
    ours = [r for r in caplog.records if r.name.startswith("reactive")]
    assert not [r for r in ours if r.exc_info or r.levelno >= logging.ERROR]


def test_a_socket_closed_while_redis_is_away_leaves_its_group_once_redis_answers(alice: Any) -> None:
    cookie = session_cookie(alice)
    group = groups.user_group(alice.pk)

    async def scenario() -> tuple[set[str], set[str]]:
        layer = get_channel_layer()
        real_discard, down = layer.group_discard, {"now": True}

        async def discard_unless_down(group: str, channel: str) -> None:
            if down["now"]:
                raise redis.ConnectionError("Error 111 connecting to redis. Connection refused.")
            await real_discard(group, channel)

        layer.group_discard = discard_unless_down
        ws = await in_room(cookie)
        await ws.disconnect()
        waiting = set(leavers.leavers().waiting)
        down["now"] = False
        await until(lambda: not leavers.leavers().waiting, timeout=10, what="the channel left")
        return waiting, await group_members(layer, group)

    waiting, members = run(scenario)
    assert len(waiting) == 1 and next(iter(waiting))[0] == group
    assert members == set()


def test_a_redis_outage_under_an_open_socket_is_one_warning_and_the_socket_lives(
    alice: Any, refresh_fast: None, caplog: pytest.LogCaptureFixture
) -> None:
    cookie = session_cookie(alice)

    async def scenario() -> dict[str, Any]:
        joins = Joins(get_channel_layer())
        ws = await in_room(cookie)
        joins.down = True
        await until(lambda: joins.failures >= 4, what="re-adds failing")
        joins.down = False
        back = len(joins.calls)
        await until(lambda: len(joins.calls) >= back + 2, what="re-added once Redis is back")
        change = {"key": "17", "version": 4, "username": "alice", "first_name": "Alicia"}
        await groups.send(groups.user_group(alice.pk), {"type": groups.USER_CHANGED, "profile": change})
        received = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return received

    with caplog.at_level(logging.INFO, logger="reactive.web"):
        assert run(scenario)["profile"]["first_name"] == "Alicia"
    lines = web_log(caplog)
    assert lines == [
        (
            "WARNING",
            "user sockets: memberships failed: ConnectionError: Connection closed by server.; "
            "retrying, silently until it works",
        ),
        ("INFO", "user sockets: memberships works again"),
    ]
    assert not any(r.exc_info for r in caplog.records)


def test_a_stale_redis_connection_costs_the_handshake_a_retry_not_a_500(alice: Any) -> None:
    """After a Redis restart the pool's first connection fails ("Connection closed by server")."""
    cookie = session_cookie(alice)

    async def scenario() -> tuple[int, dict[str, Any], dict[str, Any]]:
        joins = Joins(get_channel_layer())
        joins.fail_next = 1
        first, second = await profile_then_change("/ws/", cookie, alice.pk, {"version": 4})
        return joins.failures, first, second

    failures, first, second = run(scenario)
    assert failures == 1
    assert first["type"] == "profile" and second["profile"] == {"version": 4}


@pytest.mark.parametrize("redis_state", ["down", "stalled"])
def test_a_handshake_redis_cannot_serve_is_refused_soon_with_one_line(
    alice: Any, redis_state: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused before accept (the page's backoff retries), within JOIN_TIMEOUT_SECONDS, no traceback."""
    monkeypatch.setattr(consumers, "JOIN_TIMEOUT_SECONDS", 0.3, raising=False)
    cookie = session_cookie(alice)

    async def scenario() -> tuple[bool, float, int]:
        joins = Joins(get_channel_layer())
        joins.down, joins.stalled = redis_state == "down", redis_state == "stalled"
        loop = asyncio.get_running_loop()
        start = loop.time()
        was_refused = await refused("/ws/", cookie)
        return was_refused, loop.time() - start, len(joins.calls)

    with caplog.at_level(logging.INFO):
        was_refused, seconds, calls = run(scenario)
    assert was_refused
    assert seconds < 2
    assert calls == (2 if redis_state == "down" else 1)  # a connection error is tried once more
    reason = "ConnectionError: Connection closed by server." if redis_state == "down" else "TimeoutError"
    lines = [r for r in caplog.records if r.name == "reactive.web"]
    assert len(lines) == 1 and lines[0].levelname == "WARNING"
    assert lines[0].getMessage().startswith(f"user socket refused: cannot join user.{alice.pk}: {reason}")
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    ("answer", "discard"), [("late", "works"), ("late", "stalls"), ("connection lost", "works")]
)
def test_a_join_redis_applied_without_answering_leaves_no_member_behind(
    alice: Any, answer: str, discard: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis applied the join, but its answer came after JOIN_TIMEOUT_SECONDS, or the connection broke
    before it came: the socket is refused, and its dead channel is taken out of the room in the background
    (one debug line if that fails too)."""
    monkeypatch.setattr(consumers, "JOIN_TIMEOUT_SECONDS", 0.3, raising=False)
    cookie = session_cookie(alice)
    group = groups.user_group(alice.pk)

    async def scenario() -> tuple[bool, bool, set[str], set[str]]:
        layer, loop = get_channel_layer(), asyncio.get_running_loop()
        add, joined, discard_ended = layer.group_add, set(), []

        async def applied_then_silent(group: str, channel: str) -> None:
            if not joined:  # the retry after a lost connection finds Redis gone
                await add(group, channel)
                joined.add(channel)
            if answer == "connection lost":
                raise redis.ConnectionError("Connection closed by server.")
            await asyncio.Event().wait()  # the answer that never came in time

        async def stalled(group: str, channel: str) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                discard_ended.append(loop.time())

        layer.group_add = applied_then_silent
        if discard == "stalls":
            layer.group_discard = stalled
        ws = communicator("/ws/", cookie)
        connected, _ = await ws.connect(timeout=5)
        refused_at = loop.time()
        await ws.disconnect(timeout=0.2)
        await until(lambda: not discard_tasks(), what="the background discard done")
        not_held = all(refused_at < ended for ended in discard_ended)  # the refusal came first
        return not connected, not_held, joined, await group_members(layer, group)

    with caplog.at_level(logging.DEBUG, logger="reactive.web"):
        was_refused, not_held, joined, members = run(scenario)
    assert was_refused and not_held
    assert len(joined) == 1
    lines = web_log(caplog)
    assert lines[0][0] == "WARNING" and lines[0][1].startswith(f"user socket refused: cannot join {group}")
    if discard == "works":
        assert members == set() and len(lines) == 1
    else:
        assert members == joined  # group_expiry ends it
        (channel,) = joined
        assert lines[1:] == [
            (
                "DEBUG",
                f"could not discard {channel} from {group} after a failed join: TimeoutError: no answer in time",
            )
        ]


def test_a_clock_socket_is_not_held_by_a_stalled_redis(alice: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock's join waits JOIN_TIMEOUT_SECONDS at most; the page gets the time at once all the same
    (the fan-out goes on joining, its own timeout is longer)."""
    monkeypatch.setattr(consumers, "JOIN_TIMEOUT_SECONDS", 0.2, raising=False)
    cookie = session_cookie(alice)

    async def scenario() -> tuple[dict[str, Any], float]:
        Joins(get_channel_layer()).stalled = True
        loop = asyncio.get_running_loop()
        start = loop.time()
        ws = communicator("/time/tic/", cookie)
        assert (await ws.connect(timeout=5))[0]
        first = await ws.receive_json_from(timeout=5)
        seconds = loop.time() - start
        await ws.disconnect()
        task = broadcast(groups.CLOCK, clock_frame).task
        assert task is not None
        task.cancel()
        return first, seconds

    first, seconds = run(scenario)
    assert first["type"] == "clock.tick"
    assert seconds < 2


def test_a_re_add_on_a_connection_redis_closed_is_retried_at_once(
    alice: Any, refresh_fast: None, caplog: pytest.LogCaptureFixture
) -> None:
    """After a Redis restart the first command on a pooled connection fails: the re-add takes a fresh one
    at once, instead of leaving the page out of its room until the next round."""
    cookie = session_cookie(alice)

    async def scenario() -> tuple[int, int]:
        joins = Joins(get_channel_layer())
        ws = await in_room(cookie)
        before = len(joins.calls)
        joins.fail_next = 1
        await until(
            lambda: joins.failures == 1 and len(joins.calls) >= before + 2, what="a failed re-add retried"
        )
        await ws.disconnect()
        return joins.failures, len(joins.calls) - before

    with caplog.at_level(logging.INFO, logger="reactive.web"):
        failures, calls = run(scenario)
    assert failures == 1 and calls >= 2
    assert not [r for r in caplog.records if r.name == "reactive.web"]  # retried at once: nothing to report
