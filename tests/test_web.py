"""The client site's pages: the live user page, the clock page, the initial state, the sign-in page."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from reactive import clock
from reactive.replica import ReplicaState
from tests.support.realtime import web_log

pytestmark = pytest.mark.django_db
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def alice() -> Any:
    user = get_user_model().objects.create(username="alice", first_name="Alice", email="a@example.com")
    ReplicaState.objects.create(model="auth.user", key="17", version=3, local_pk=str(user.pk))
    return user


@pytest.fixture
def browser(alice: Any) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def embedded(page: str, element_id: str) -> Any:
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', page, re.S)
    assert match, f"no {element_id} in the page"
    return json.loads(match.group(1))


@pytest.mark.parametrize("path", ["/", "/clock/"])
def test_pages_need_a_signed_in_user(path: str) -> None:
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={path}"
    assert "Sign in on the master" in Client().get("/login/").content.decode()


def test_the_sign_in_page_links_to_the_master(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from client_site.web import views
    from reactive import settings as reactive_settings

    monkeypatch.setattr(views, "_warned", set())
    monkeypatch.delenv("REACTIVE_MASTER_URL", raising=False)
    monkeypatch.delenv("DJANGO_DEBUG", raising=False)
    assert '<a id="master" href="http://127.0.0.1:8001/">' in Client().get("/login/").content.decode()
    monkeypatch.setenv("DJANGO_DEBUG", "0")  # production: no guess at where the master is
    assert 'id="master"' not in Client().get("/login/").content.decode()
    monkeypatch.delenv("DJANGO_DEBUG")
    monkeypatch.setenv("REACTIVE_MASTER_URL", "https://master.example.com/")
    assert '<a id="master" href="https://master.example.com/">' in Client().get("/login/").content.decode()
    for wrong in ("master.example.com", "ftp://master.example.com", "https://"):
        monkeypatch.setenv("REACTIVE_MASTER_URL", wrong)
        with pytest.raises(reactive_settings.ConfigError, match="REACTIVE_MASTER_URL must be an http"):
            reactive_settings.master_url()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="reactive.web"):
            page = Client().get("/login/")  # the page stays up, without the link, and the log says why
            Client().get("/login/")  # once per process, not once per page
        assert page.status_code == 200 and 'id="master"' not in page.content.decode()
        said = [message for _, message in web_log(caplog)]
        assert len(said) == 1 and "REACTIVE_MASTER_URL must be an http" in said[0]


def test_the_live_page_greets_by_first_name_and_carries_the_version(browser: Client) -> None:
    response = browser.get("/")
    page = response.content.decode()
    assert '<h1>Hello <span id="first-name" aria-live="polite">Alice</span></h1>' in page
    assert embedded(page, "initial-profile")["version"] == 3
    assert "/static/reactive/socket.js" in page and "/static/reactive/user.js" in page
    assert "script-src 'self'" in response["Content-Security-Policy"]


def test_user_text_is_escaped_in_the_page(alice: Any, browser: Client) -> None:
    alice.first_name = XSS
    alice.save()
    page = browser.get("/").content.decode()
    assert XSS not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert embedded(page, "initial-profile")["first_name"] == XSS


def test_the_clock_page_shows_the_stored_time_at_once(redis_layer: str, browser: Client) -> None:
    clock.store({"time": "03:04:05", "iso": "2026-01-02T03:04:05.678+00:00", "zone": "CET"})
    page = browser.get("/clock/").content.decode()
    assert '<time id="clock" datetime="2026-01-02T03:04:05.678+00:00">03:04:05</time>' in page
    assert '<span id="clock-zone">CET</span>' in page  # the time says in which zone it is
    assert embedded(page, "initial-tick")["time"] == "03:04:05"


@pytest.mark.parametrize("path", ["/", "/clock/", "/api/initial_state"])
def test_pages_showing_the_user_are_never_cached(redis_layer: str, browser: Client, path: str) -> None:
    """After a sign-out, Back must not show the last user's name and email from the browser's cache."""
    assert "no-store" in browser.get(path)["Cache-Control"]


def test_initial_state_needs_a_session_and_returns_the_current_state(
    redis_layer: str, browser: Client
) -> None:
    anonymous = Client().get("/api/initial_state")
    assert anonymous.status_code == 401 and anonymous.json() == {"error": "login required"}
    clock.store({"time": "03:04:05", "iso": "2026-01-02T03:04:05.678+00:00"})
    current = browser.get("/api/initial_state").json()["current"]
    assert current["profile"]["first_name"] == "Alice" and current["profile"]["version"] == 3
    assert current["clock"]["time"] == "03:04:05"


def test_sign_out_ends_the_session(browser: Client) -> None:
    assert browser.get("/logout/").status_code == 405  # never by a link another site could embed
    assert browser.post("/logout/")["Location"] == "/login/"
    assert browser.get("/api/initial_state").status_code == 401
