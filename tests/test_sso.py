"""Login links: signing and checking (reactive.sso), the client's sign-in view, the master's "open" page and
`reactive login-link`."""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.core import signing
from django.test import Client
from django.utils import timezone

from reactive import sso
from reactive.replica import ReplicaState
from tests.support.realtime import web_log

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment wins over Django settings (reactive.settings): keep a developer's shell out.
    for name in ("REACTIVE_SSO_KEY", "REACTIVE_CLIENT_URLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REACTIVE_CLIENT", "alpha")


def replica(username: str, master_key: str, first_name: str = "", **extra: Any) -> Any:
    user = get_user_model().objects.create(username=username, first_name=first_name, **extra)
    ReplicaState.objects.create(model="auth.user", key=master_key, version=1, local_pk=str(user.pk))
    return user


def issued_seconds_ago(seconds: float, monkeypatch: pytest.MonkeyPatch, **claim: str) -> str:
    real = time.time
    monkeypatch.setattr(signing.time, "time", lambda: real() - seconds)
    try:
        return sso.issue(claim.get("key", "7"), claim.get("username", "alice"), claim.get("client", "alpha"))
    finally:
        monkeypatch.setattr(signing.time, "time", real)


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


# -- signing and checking -------------------------------------------------------------------------


def test_a_link_names_the_master_key_the_client_and_a_fresh_nonce() -> None:
    first, second = sso.issue(7, "alice", "alpha"), sso.issue(7, "alice", "alpha")
    claim = sso.verify(first, "alpha")
    assert (claim.key, claim.username, claim.client) == ("7", "alice", "alpha")
    assert claim.nonce != sso.verify(second, "alpha").nonce


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), "invalid"),
        (lambda t: "x" + t, "invalid"),
        (lambda t: "", "invalid"),
        (
            lambda t: signing.dumps(
                {"k": "7", "u": "alice", "c": "alpha", "n": "x"}, key="other", salt=sso.SALT
            ),
            "invalid",
        ),
        (
            lambda t: signing.dumps({"k": "7", "u": "alice", "c": "alpha", "n": "x"}, key=sso._key()),
            "invalid",
        ),
        (lambda t: signing.dumps(["k"], key=sso._key(), salt=sso.SALT), "invalid"),
    ],
    ids=["tampered", "prefixed", "empty", "other-key", "other-salt", "not-a-claim"],
)
def test_a_link_not_signed_by_the_master_is_refused(mangle: Any, reason: str) -> None:
    with pytest.raises(sso.LinkRefused) as refused:
        sso.verify(mangle(sso.issue(7, "alice", "alpha")), "alpha")
    assert refused.value.reason == reason


def test_a_link_lives_sixty_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sso.verify(issued_seconds_ago(50, monkeypatch), "alpha").username == "alice"
    with pytest.raises(sso.LinkRefused) as refused:
        sso.verify(issued_seconds_ago(61, monkeypatch), "alpha")
    assert refused.value.reason == "expired"


def test_a_link_for_another_client_is_refused() -> None:
    with pytest.raises(sso.LinkRefused) as refused:
        sso.verify(sso.issue(7, "alice", "beta"), "alpha")
    assert refused.value.reason == "foreign"
    assert "beta" in str(refused.value)


def test_login_url_points_at_the_clients_sso_view(settings: Any) -> None:
    settings.REACTIVE_CLIENT_URLS = {"alpha": "https://alpha.example/"}
    user = get_user_model().objects.create(username="alice")
    url = sso.login_url(user, "alpha")
    assert url.startswith("https://alpha.example/sso/login?token=")
    assert sso.verify(token_of(url), "alpha").key == str(user.pk)


def test_login_url_for_an_unknown_client_is_a_config_error() -> None:
    user = get_user_model().objects.create(username="alice")
    with pytest.raises(sso.ConfigError, match="no URL known for client 'gamma'"):
        sso.login_url(user, "gamma")


# -- the client's sign-in view --------------------------------------------------------------------


def signed_in_username(client: Client) -> str | None:
    response = client.get("/api/initial_state")
    return response.json()["current"]["profile"]["username"] if response.status_code == 200 else None


def browser() -> Client:
    return Client(enforce_csrf_checks=True)  # as a real browser's requests are checked


def form_field(page: Any, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', page.content.decode())
    assert found, page.content.decode()
    return found.group(1)


def continue_on(page: Any, browser: Client) -> Any:
    """Press "continue" on the confirmation page ``page`` (its form: the CSRF token and the link's nonce)."""
    fields = {name: form_field(page, name) for name in ("csrfmiddlewaretoken", "nonce")}
    return browser.post("/sso/login", fields)


def sign_in_by_link(browser: Client, token: str) -> Any:
    """What a person does with a link: open it, then press "continue" on the page that names the account."""
    asked = browser.get("/sso/login", {"token": token})
    return continue_on(asked, browser) if asked.status_code == 200 else asked


def test_a_valid_link_is_spent_when_opened_and_signs_in_on_continue() -> None:
    replica("alice", master_key="42", first_name="Alice")
    token = sso.issue("42", "alice", "alpha")
    person = browser()
    asked = person.get("/sso/login", {"token": token})
    assert asked.status_code == 200 and "no-store" in asked["Cache-Control"]
    assert '<strong id="account">alice</strong>' in asked.content.decode()
    assert signed_in_username(person) is None  # opening the link alone signs nobody in

    thief = browser()  # the link copied (history, a proxy's log) once its owner opened it
    response = thief.get("/sso/login", {"token": token})
    assert response.status_code == 403 and "already been used" in response.content.decode()
    assert signed_in_username(thief) is None

    response = continue_on(asked, person)
    assert response.status_code == 302 and response["Location"] == "/"
    assert signed_in_username(person) == "alice"
    assert 'Hello <span id="first-name" aria-live="polite">Alice</span>' in person.get("/").content.decode()
    back = person.get("/sso/login", {"token": token})  # the back button: on to the site, not an error
    assert back.status_code == 302 and back["Location"] == "/"


def test_a_forwarded_link_cannot_sign_its_victim_in_unseen() -> None:
    """Login CSRF: the attacker's own link opened in the victim's browser (a redirect, a frame, an image),
    then posted to by another page, or by the attacker's browser: nobody is signed in."""
    replica("mallory", master_key="66")
    token = sso.issue("66", "mallory", "alpha")
    victim = browser()
    asked = victim.get("/sso/login", {"token": token})
    assert asked.status_code == 200 and "frame-ancestors 'none'" in asked["Content-Security-Policy"]
    assert signed_in_username(victim) is None

    nonce = form_field(asked, "nonce")  # the attacker knows it: it is in the link they made
    forged = victim.post("/sso/login", {"nonce": nonce})  # a cross-site form has no CSRF token
    assert forged.status_code == 403 and signed_in_username(victim) is None

    attacker = browser()
    own_page = attacker.get("/sso/login", {"token": sso.issue("66", "mallory", "alpha")})  # a CSRF token
    response = attacker.post(
        "/sso/login", {"nonce": nonce, "csrfmiddlewaretoken": form_field(own_page, "csrfmiddlewaretoken")}
    )
    assert 'data-reason="unconfirmed"' in response.content.decode()  # not the browser that opened it
    assert signed_in_username(victim) is None and signed_in_username(attacker) is None


def test_a_confirmation_past_five_minutes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from client_site.web import views

    replica("alice", master_key="42")
    person = browser()
    asked = person.get("/sso/login", {"token": sso.issue("42", "alice", "alpha")})
    real = time.time
    monkeypatch.setattr(views.time, "time", lambda: real() + views.CONFIRM_SECONDS + 1)
    response = continue_on(asked, person)
    assert response.status_code == 403
    assert 'data-reason="unconfirmed"' in response.content.decode()
    assert signed_in_username(person) is None


def test_an_account_disabled_before_continue_is_not_signed_in() -> None:
    alice = replica("alice", master_key="42")
    person = browser()
    asked = person.get("/sso/login", {"token": sso.issue("42", "alice", "alpha")})
    alice.is_active = False
    alice.save()
    response = continue_on(asked, person)
    assert 'data-reason="inactive"' in response.content.decode()
    assert signed_in_username(person) is None


def test_a_reload_shows_the_page_again_and_an_earlier_tab_still_signs_in() -> None:
    replica("alice", master_key="42")
    first, second = sso.issue("42", "alice", "alpha"), sso.issue("42", "alice", "alpha")
    person = browser()
    first_tab = person.get("/sso/login", {"token": first})
    assert person.get("/sso/login", {"token": first}).status_code == 200  # a reload, not a second use
    second_tab = person.get("/sso/login", {"token": second})  # "open" clicked twice on the master
    assert continue_on(first_tab, person).status_code == 302
    assert signed_in_username(person) == "alice"
    # Signing in renewed the CSRF token: the other tab's form is out of date, and says so in the site's words.
    stale = continue_on(second_tab, person)
    assert stale.status_code == 403 and 'id="stale"' in stale.content.decode()
    assert "You are signed in as alice" in stale.content.decode()
    assert signed_in_username(person) == "alice"


def test_a_browser_already_signed_in_as_the_links_user_goes_straight_on() -> None:
    alice = replica("alice", master_key="42")
    token = sso.issue("42", "alice", "alpha")
    person = browser()
    person.force_login(alice)
    response = person.get("/sso/login", {"token": token})
    assert response.status_code == 302 and response["Location"] == "/"
    assert browser().get("/sso/login", {"token": token}).status_code == 403  # spent


def test_a_link_for_another_account_says_it_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    """And signs alice out first: her pages open in other tabs of this browser are told their session
    ended (their sockets close), instead of streaming her data into a browser now bob's."""
    from reactive import groups

    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(groups, "send_sync", lambda group, message: sent.append((group, message)) or True)
    alice = replica("alice", master_key="42")
    replica("bob", master_key="43")
    person = browser()
    person.force_login(alice)
    alices_session = person.session.session_key
    asked = person.get("/sso/login", {"token": sso.issue("43", "bob", "alpha")})
    assert "signed in here as alice: continuing signs it in as bob" in asked.content.decode()
    assert signed_in_username(person) == "alice"
    assert continue_on(asked, person).status_code == 302
    assert signed_in_username(person) == "bob"
    ended = groups.session_ended_message(alice.pk, alices_session)
    assert sent == [(groups.user_group(alice.pk), ended), (groups.ENDED_ACCOUNTS, ended)]


def test_a_used_link_stays_refused_when_the_masters_clock_runs_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """A link signed 90 s in the client's future is still valid two minutes after its first use."""
    import time as clock

    from client_site.web.models import UsedLoginLink

    replica("alice", master_key="42")
    real = clock.time
    monkeypatch.setattr(clock, "time", lambda: real() + 90)  # the master's clock
    token = sso.issue("42", "alice", "alpha")
    monkeypatch.setattr(clock, "time", real)
    assert sign_in_by_link(browser(), token).status_code == 302
    UsedLoginLink.objects.update(used_at=timezone.now() - timedelta(seconds=121))
    replica("bob", master_key="43")
    sign_in_by_link(browser(), sso.issue("43", "bob", "alpha"))  # a later sign-in prunes old nonces
    assert browser().get("/sso/login", {"token": token}).status_code == 403


def test_identity_is_the_master_key_not_the_username() -> None:
    replica("alice", master_key="42")
    replica("mallory", master_key="43")
    person = browser()
    sign_in_by_link(person, sso.issue("43", "alice", "alpha"))  # renamed on the master since
    assert signed_in_username(person) == "mallory"


@pytest.mark.parametrize("case", ["expired", "tampered", "foreign", "unknown", "inactive", "deleted"])
def test_a_refused_link_shows_why_and_signs_nobody_in(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    user = replica("alice", master_key="42", is_active=case != "inactive")
    if case == "deleted":
        ReplicaState.objects.filter(key="42").update(deleted=True)
    token = {
        "expired": lambda: issued_seconds_ago(61, monkeypatch, key="42"),
        "tampered": lambda: sso.issue("42", "alice", "alpha")[:-3] + "xyz",
        "foreign": lambda: sso.issue("42", "alice", "beta"),
        "unknown": lambda: sso.issue("99", "zoe", "alpha"),
        "inactive": lambda: sso.issue("42", "alice", "alpha"),
        "deleted": lambda: sso.issue("42", "alice", "alpha"),
    }[case]()
    browser = Client()
    response = browser.get("/sso/login", {"token": token})
    assert response.status_code == 403
    page = response.content.decode()
    assert "Login link refused" in page and "Nobody was signed in" in page
    assert re.search(r'data-reason="(expired|invalid|foreign|unknown|inactive)"', page)
    assert signed_in_username(browser) is None
    user.refresh_from_db()
    assert user.last_login is None


def test_a_refused_link_leaves_a_signed_in_user_as_they_were() -> None:
    alice = replica("alice", master_key="42")
    replica("bob", master_key="43")
    browser = Client()
    browser.force_login(alice)
    browser.get("/sso/login", {"token": sso.issue("43", "bob", "beta")})
    assert signed_in_username(browser) == "alice"


# -- the master's page of client links ------------------------------------------------------------


@pytest.fixture
def master(settings: Any) -> Client:
    settings.ROOT_URLCONF = "master_site.urls"
    settings.REACTIVE_CLIENT_URLS = {"alpha": "http://alpha.example", "beta": "http://beta.example:8002"}
    return Client()


def test_the_master_page_needs_a_signed_in_user(master: Client) -> None:
    response = master.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_a_non_staff_user_signs_in_on_the_master_and_sees_an_open_link_per_client(master: Client) -> None:
    get_user_model().objects.create_user("alice", password="pw")
    response = master.post("/login/", {"username": "alice", "password": "pw"})
    assert response.status_code == 302 and response["Location"] == "/"
    page = master.get("/").content.decode()
    assert page.count(">open</a>") == 2
    assert 'href="/open/alpha/"' in page and 'href="/open/beta/"' in page


def test_open_mints_a_link_for_that_client_at_click_time(master: Client) -> None:
    alice = get_user_model().objects.create_user("alice", password="pw")
    master.force_login(alice)
    response = master.get("/open/beta/")
    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith("http://beta.example:8002/sso/login?token=")
    claim = sso.verify(token_of(location), "beta")
    assert (claim.key, claim.username) == (str(alice.pk), "alice")
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    assert master.get("/open/gamma/").status_code == 404


def test_a_user_the_master_does_not_sync_is_told_so_instead_of_given_dead_links(master: Client) -> None:
    # No capture registered here (as with REACTIVE_CAPTURE off): the settings' predicate says who is synced.
    staff = get_user_model().objects.create_user("ops", password="pw", is_staff=True)
    master.force_login(staff)
    page = master.get("/").content.decode()
    assert "No site will sign you in: ops is not synced to the client sites" in page
    assert ">open</a>" not in page
    refused = master.get("/open/alpha/")
    assert refused.status_code == 403 and "Location" not in refused
    assert "ops is not synced to the client sites" in refused.content.decode()


# -- reactive login-link ----------------------------------------------------------------------------


def test_login_link_command_prints_a_working_link(settings: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    settings.REACTIVE_CLIENT_URLS = {"alpha": "http://alpha.example"}
    alice = get_user_model().objects.create_user("alice")
    result = CliRunner().invoke(app, ["login-link", "alice", "--client", "alpha"])
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith("http://alpha.example/sso/login?token=")
    assert sso.verify(token_of(url), "alpha").key == str(alice.pk)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["login-link", "nobody", "--client", "alpha"], "no user 'nobody' on the master"),
        (["login-link", "alice", "--client", "gamma"], "no URL known for client 'gamma'"),
        (
            ["login-link", "ops", "--client", "alpha"],
            "ops is not synced to the client sites (REACTIVE_SYNC_PREDICATE leaves the account out): "
            "alpha would refuse a link",
        ),
        (
            ["login-link", "gone", "--client", "alpha"],
            "gone is disabled on the master, and so on every client",
        ),
    ],
)
@pytest.mark.usefixtures("captured")
def test_login_link_command_refuses_unknown_users_and_clients(
    settings: Any, argv: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from cli.main import app
    from reactive.errors import ReactiveError

    settings.REACTIVE_CLIENT_URLS = {"alpha": "http://alpha.example"}
    get_user_model().objects.create_user("alice")
    get_user_model().objects.create_user("ops", is_staff=True)
    get_user_model().objects.create_user("gone", is_active=False)
    result = CliRunner().invoke(app, argv)
    assert isinstance(result.exception, ReactiveError) and result.exception.exit_code == 1
    assert message in str(result.exception)


def ours(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """What the site logged at ``level`` (Django's own CSRF warning aside)."""
    return [message for name, message in web_log(caplog) if name == logging.getLevelName(level)]


@pytest.mark.parametrize(
    ("origin", "hint"),
    [
        ("https://evil.example", None),  # anyone's page can post here: no warning
        ("https://testserver", "DJANGO_CSRF_TRUSTED_ORIGINS"),  # our own host, through a TLS proxy
        ("https://testserver:8443", "DJANGO_CSRF_TRUSTED_ORIGINS"),  # a proxy on a port of its own
    ],
)
def test_a_form_from_another_origin_is_refused_and_a_proxy_set_up_is_told(
    caplog: pytest.LogCaptureFixture, origin: str, hint: str | None
) -> None:
    replica("alice", master_key="42")
    person = browser()
    asked = person.get("/sso/login", {"token": sso.issue("42", "alice", "alpha")})
    fields = {name: form_field(asked, name) for name in ("csrfmiddlewaretoken", "nonce")}
    with caplog.at_level(logging.INFO, logger="reactive.web"):
        response = person.post("/sso/login", fields, HTTP_ORIGIN=origin)
    assert response.status_code == 403 and 'id="foreign"' in response.content.decode()
    assert signed_in_username(person) is None
    warnings = ours(caplog, logging.WARNING)
    if hint is None:
        assert warnings == [] and origin in ours(caplog, logging.INFO)[0]
    else:
        assert len(warnings) == 1 and hint in warnings[0] and origin in warnings[0]


def test_a_browser_that_sends_no_cookies_is_told_and_the_operator_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    replica("alice", master_key="42")
    person = browser()
    asked = person.get("/sso/login", {"token": sso.issue("42", "alice", "alpha")})
    fields = {name: form_field(asked, name) for name in ("csrfmiddlewaretoken", "nonce")}
    person.cookies.clear()  # secure cookies over plain HTTP never come back
    with caplog.at_level(logging.INFO, logger="reactive.web"):
        response = person.post("/sso/login", fields)
    assert response.status_code == 403 and 'id="no-cookie"' in response.content.decode()
    warnings = ours(caplog, logging.WARNING)
    assert len(warnings) == 1 and "DJANGO_SECURE_PROXY" in warnings[0]


def test_a_link_that_comes_before_its_user_is_looked_at_again_until_the_user_is_here() -> None:
    """A user created on the master a moment ago: the page looks again every 2 s while the link lives."""
    token = sso.issue("42", "alice", "alpha")
    person = browser()
    early = person.get("/sso/login", {"token": token})
    assert 'data-reason="unknown"' in early.content.decode()
    assert '<meta http-equiv="refresh" content="2">' in early.content.decode()
    replica("alice", master_key="42")  # the listener applied the insert meanwhile
    again = person.get("/sso/login", {"token": token})  # what the refresh does
    assert again.status_code == 200 and '<strong id="account">alice</strong>' in again.content.decode()
    assert continue_on(again, person).status_code == 302 and signed_in_username(person) == "alice"
    other = browser().get("/sso/login", {"token": sso.issue("42", "alice", "beta")})  # another refusal
    assert "http-equiv" not in other.content.decode()  # looking again would not change it


def test_the_back_button_after_continue_goes_on_to_the_site_even_past_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice = replica("alice", master_key="42")
    token = issued_seconds_ago(100, monkeypatch, key="42")  # made, opened, read, confirmed: 100 s ago
    person = browser()
    person.force_login(alice)
    back = person.get("/sso/login", {"token": token})
    assert back.status_code == 302 and back["Location"] == "/"


def test_a_reload_past_the_five_minutes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from client_site.web import views

    replica("alice", master_key="42")
    token = sso.issue("42", "alice", "alpha")
    person = browser()
    assert person.get("/sso/login", {"token": token}).status_code == 200
    real = time.time
    monkeypatch.setattr(views.time, "time", lambda: real() + views.CONFIRM_SECONDS + 1)
    reload = person.get("/sso/login", {"token": token})
    assert 'data-reason="unconfirmed"' in reload.content.decode()


@pytest.mark.parametrize(
    "stored",
    [
        {"nonce": "n0", "at": 1.0},  # another release's shape
        {"n1": {"key": "42"}},  # an entry cut short
        "opened",
        {"n2": {"key": 42, "username": "alice", "at": "soon"}},
    ],
)
def test_odd_session_contents_do_not_stop_a_sign_in(stored: Any) -> None:
    from client_site.web import views

    replica("alice", master_key="42")
    person = browser()
    person.get("/login/")  # a session to put things in
    session = person.session
    session[views.PENDING_SIGN_INS] = stored
    session.save()
    assert sign_in_by_link(person, sso.issue("42", "alice", "alpha")).status_code == 302
    assert signed_in_username(person) == "alice"
    forged = browser()
    page = forged.get("/sso/login", {"token": sso.issue("42", "alice", "alpha")})
    response = forged.post(
        "/sso/login", {"nonce": "n2", "csrfmiddlewaretoken": form_field(page, "csrfmiddlewaretoken")}
    )
    assert 'data-reason="unconfirmed"' in response.content.decode()
