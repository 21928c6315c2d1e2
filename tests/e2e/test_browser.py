"""The pages in a real browser (Debian's Chromium driven by Playwright): sign in through a master login link,
watch the name change live, user text stays text, the clock advances and survives a server restart."""

from __future__ import annotations

import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import services
from tests.support.services import eventually, free_port
from tests.support.sites import VENV_BIN, Deployment
from tests.support.web import Served, replica_names, session_cookie, set_first_name

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = "<img src=x onerror=alert(1)>"
SECONDS = 1000  # Playwright counts milliseconds
TIME = re.compile(r"^\d\d:\d\d:\d\d$")
RECORD_FIRST_NAMES = """() => {
    const element = document.getElementById("first-name");
    window.shown = [];
    new MutationObserver(() => window.shown.push(element.textContent))
        .observe(element, {childList: true, characterData: true, subtree: true});
}"""
SEND_PROFILES = """
from reactive import groups
from reactive.replica import ReplicaState
state = ReplicaState.objects.get()
profile = {{"key": state.key, "username": "alice", "last_name": "", "email": "", "is_active": True}}
groups.notify_profiles([(state.local_pk, {{**profile, "version": {stale}, "first_name": "Stale"}})])
groups.notify_profiles([(state.local_pk, {{**profile, "version": {marker}, "first_name": "Marker"}})])
"""
APPLY_EVENT = """
from django.db import transaction
from reactive.events import Event
from reactive.groups import notify_profiles
from reactive.replica import apply_batch
event = Event(model="auth.user", action={action!r}, key={key!r}, version={version}, key_field={key_field!r},
              data={data!r}, changed=tuple({data!r}))
with transaction.atomic():
    outcome = apply_batch([event])[0]
assert outcome.status == "applied", outcome
notify_profiles([(outcome.local_pk, outcome.profile)])
"""
LATER_TIME = (
    "before => Date.parse(document.getElementById('clock').getAttribute('datetime')) > Date.parse(before)"
)


@dataclass
class System:
    deployment: Deployment
    master: Served
    alpha: Served


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        services.missing("Chromium", f"{CHROMIUM} is absent (apt-get install chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as exc:
        services.missing("Playwright", str(exc))
    # The context's default timeout does not reach expect(), which waits 5 s: less than a page's reconnect
    # backoff after a restart, or the whole path from a save to a page on a loaded machine.
    expect.set_options(timeout=30 * SECONDS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def system(moto_endpoint: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """Master and alpha as processes: worker, listener, beat, two uvicorns; alice on the master."""
    from reactive.provision import Options, Provisioner
    from reactive.transport import get_transport

    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "REACTIVE_PREFIX": f"t{uuid.uuid4().hex[:10]}",
        "REACTIVE_TRANSPORT": "sqs",
        "REDIS_URL": redis_url,
        "REACTIVE_SSO_KEY": "browser-sso-key-0123456789abcdef",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        get_transport.cache_clear()
        Provisioner(Options(clients=["alpha"])).run()
        get_transport.cache_clear()
    deployment = Deployment(workdir=tmp_path_factory.mktemp("browser"), base_env=env, clients=("alpha",))
    deployment.migrate()
    try:
        alpha = Served(deployment, "alpha", free_port()).start()
        master = Served(deployment, "master", free_port()).start(REACTIVE_CLIENT_URLS=f"alpha={alpha.url}")
        deployment.start_worker()
        deployment.start_listener("alpha", "--wait", "1")
        deployment.start("alpha", [str(VENV_BIN / "reactive"), "beat", "--interval", "0.5"], "beat-alpha")
        deployment.python(
            "master",
            "from django.contrib.auth import get_user_model\n"
            'get_user_model().objects.create_user("alice", "a@example.com", "pw", first_name="Alice")',
        )
        eventually(
            lambda: replica_names(deployment, "alpha") == {"alice": "Alice"},
            timeout=60,
            what="alice replicated",
        )
        yield System(deployment, master, alpha)
    finally:
        deployment.stop_all()


@dataclass
class AlphaAlone:
    """Alpha's web alone: events are applied and pushed as its listener would, without SQS or a master."""

    deployment: Deployment
    alpha: Served

    def event(self, action: str, key: str, version: int, key_field: str = "pk", **data: Any) -> None:
        code = APPLY_EVENT.format(action=action, key=key, version=version, key_field=key_field, data=data)
        self.deployment.python("alpha", code)

    def live_page(self, context: Any, username: str) -> Any:
        from playwright.sync_api import expect

        cookie = session_cookie(self.deployment, "alpha", username)
        context.add_cookies([{"name": "sessionid", "value": cookie, "url": self.alpha.url}])
        page = context.new_page()
        page.goto(self.alpha.url + "/")
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        return page


@pytest.fixture(scope="module")
def alpha_alone(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlphaAlone]:
    env = {"REDIS_URL": redis_url, "REACTIVE_PREFIX": f"t{uuid.uuid4().hex[:10]}"}
    deployment = Deployment(workdir=tmp_path_factory.mktemp("alone"), base_env=env, clients=("alpha",))
    deployment.run("alpha", [sys.executable, "-m", "django", "migrate", "--noinput"])
    try:
        yield AlphaAlone(deployment, Served(deployment, "alpha", free_port()).start())
    finally:
        deployment.stop_all()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(30 * SECONDS)
    yield context
    context.close()


def test_sign_in_by_master_link_then_the_name_changes_live_as_text(system: System, context: Any) -> None:
    from playwright.sync_api import expect

    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(system.master.url + "/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "pw")
    page.click("button[type=submit]")
    with page.expect_request(lambda request: "/sso/login?token=" in request.url) as followed:
        page.click("tr[data-client=alpha] >> text=open")
    link = followed.value.url
    expect(page.locator("#account")).to_have_text("alice")  # alpha asks before it signs anyone in
    page.click("#continue")
    expect(page).to_have_url(system.alpha.url + "/")
    expect(page.locator("h1")).to_have_text("Hello Alice")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")

    page.evaluate("window.sameDocument = true")  # a reload would lose it
    set_first_name(system.deployment, "alice", "Alicia")
    expect(page.locator("#first-name")).to_have_text("Alicia")

    set_first_name(system.deployment, "alice", XSS)
    expect(page.locator("#first-name")).to_have_text(XSS)
    assert page.locator("main img").count() == 0
    assert dialogs == []
    assert page.evaluate("window.sameDocument") is True

    # The link was used once: a second browser following it is refused and signed in nowhere.
    other = context.browser.new_context()
    refused = other.new_page()
    refused.goto(link)
    expect(refused.locator("#refusal")).to_have_attribute("data-reason", "used")
    refused.goto(system.alpha.url + "/")
    expect(refused).to_have_url(system.alpha.url + "/login/?next=/")
    other.close()


def sign_in_as_alice(system: System, context: Any) -> None:
    """A session cookie for alice on alpha, without going through a login link."""
    cookie = session_cookie(system.deployment, "alpha", "alice")
    context.add_cookies([{"name": "sessionid", "value": cookie, "url": system.alpha.url}])


def test_an_older_update_never_replaces_a_newer_one(system: System, context: Any) -> None:
    from playwright.sync_api import expect

    sign_in_as_alice(system, context)
    page = context.new_page()
    page.goto(system.alpha.url + "/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    page.evaluate(RECORD_FIRST_NAMES)
    version = int(page.locator("#version").text_content() or "0")
    # Straight to the personal group, as a late redelivery would arrive: the stale one first, then a marker.
    system.deployment.python("alpha", SEND_PROFILES.format(stale=version - 1, marker=version))
    expect(page.locator("#first-name")).to_have_text("Marker")
    assert "Stale" not in page.evaluate("window.shown")


def test_the_clock_advances_and_recovers_after_a_server_restart(system: System, context: Any) -> None:
    from playwright.sync_api import expect

    sign_in_as_alice(system, context)
    page = context.new_page()
    page.goto(system.alpha.url + "/clock/")
    clock, state = page.locator("#clock"), page.locator("#connection")
    expect(clock).to_have_text(TIME)
    expect(state).to_have_attribute("data-state", "live")
    advanced(page)

    system.alpha.stop()
    expect(state).to_have_attribute("data-state", "reconnecting")
    system.alpha.start()
    expect(state).to_have_attribute("data-state", "live")
    advanced(page)
    # The socket URL follows the page's scheme (ws: here; wss: under https) and the backoff stays bounded.
    assert page.evaluate(
        "Reactive.socketUrl('/time/tic/', {protocol: 'https:', host: 'h.example:8443'})"
    ) == ("wss://h.example:8443/time/tic/")
    assert (
        page.evaluate("Reactive.socketUrl('/ws/a', location)")
        == system.alpha.url.replace("http:", "ws:") + "/ws/a"
    )
    delays = page.evaluate(
        "[0, 1, 5, 30].map(n => [Reactive.backoffDelay(n, () => 0), Reactive.backoffDelay(n, () => 1)])"
    )
    assert delays == [[250, 500], [500, 1000], [7500, 15000], [7500, 15000]]


def advanced(page: Any) -> None:
    """The clock shows a later time than now, within a few seconds."""
    before = page.locator("#clock").get_attribute("datetime")
    page.wait_for_function(LATER_TIME, arg=before, timeout=10 * SECONDS)


def test_a_rename_missed_while_offline_shows_on_reconnect(alpha_alone: AlphaAlone, context: Any) -> None:
    from playwright.sync_api import expect

    alpha_alone.event("insert", "31", 1, username="carol", first_name="Carol", is_active=True)
    page = alpha_alone.live_page(context, "carol")
    state = page.locator("#connection")
    alpha_alone.alpha.stop()
    expect(state).to_have_attribute("data-state", "reconnecting")
    alpha_alone.event("update", "31", 2, username="caroline", first_name="Caroline")
    alpha_alone.alpha.start()
    expect(page.locator("#username")).to_have_text("caroline")
    expect(state).to_have_attribute("data-state", "live")


def test_the_page_follows_a_legacy_replica_onto_the_masters_versions(
    alpha_alone: AlphaAlone, context: Any
) -> None:
    """Shown at a legacy version (an SQS timestamp in ms), then the master's keyed events (outbox ids)."""
    from playwright.sync_api import expect

    legacy = {"username": "dave", "first_name": "Dave", "is_active": True}
    alpha_alone.event("insert", "dave", 1764600000000, key_field="username", **legacy)
    page = alpha_alone.live_page(context, "dave")
    expect(page.locator("#version")).to_have_text("1764600000000")
    alpha_alone.event("update", "41", 5, username="dave", first_name="Davina")
    expect(page.locator("#first-name")).to_have_text("Davina")
    alpha_alone.event("update", "41", 6, first_name="Dee")
    expect(page.locator("#first-name")).to_have_text("Dee")


def test_a_disabled_account_page_ends_signed_out(alpha_alone: AlphaAlone, context: Any) -> None:
    from playwright.sync_api import expect

    alpha_alone.event("insert", "51", 1, username="erin", first_name="Erin", is_active=True)
    page = alpha_alone.live_page(context, "erin")
    alpha_alone.event("update", "51", 2, is_active=False)
    expect(page.locator("#connection")).to_have_attribute("data-state", "ended")
    expect(page.locator("#connection")).to_have_text("account disabled: signed out")
    expect(page.locator("#notice")).to_contain_text("disabled")


@pytest.mark.parametrize(("key", "username"), [("61", "."), ("62", "..")])
def test_users_named_dot_or_dot_dot_go_live(
    alpha_alone: AlphaAlone, context: Any, key: str, username: str
) -> None:
    """The page's socket path holds no username, so the URL parser has no dot segment to resolve away."""
    from playwright.sync_api import expect

    alpha_alone.event("insert", key, 1, username=username, first_name="Dot", is_active=True)
    page = alpha_alone.live_page(context, username)
    alpha_alone.event("update", key, 2, first_name="Dotty")
    expect(page.locator("#first-name")).to_have_text("Dotty")
