"""The clock page in a real browser, its ticks sent by the test: a tick from the future does not freeze it,
and a silent socket is shown stale, then dropped and reconnected (a user page hears heartbeats, and is
reconnected without them); a handshake never answered is retried; a sign-out elsewhere ends the pages."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import pytest

from tests.e2e import test_browser as browser_tests
from tests.e2e.test_browser import SECONDS, AlphaAlone
from tests.support.sites import ROOT
from tests.support.web import session_cookie

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# The browser tests' fixtures, shared: Chromium, a context per test, alpha's web alone (no beat).
browser = browser_tests.browser
context = browser_tests.context
alpha_alone = browser_tests.alpha_alone

# One process inside alpha that sends a tick for each ISO time read on stdin and prints the tick's iso back.
TICKER = """
import asyncio, sys
from datetime import datetime
import django
django.setup()
from reactive import clock

async def main():
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        tick = await clock.atick(now=datetime.fromisoformat(line.strip()))
        print(tick["iso"], flush=True)

asyncio.run(main())
"""
RECORD = """([id, attribute]) => {
    const element = document.getElementById(id);
    const seen = [element.getAttribute(attribute)];
    window.seen = window.seen || {};
    window.seen[id] = seen;
    new MutationObserver(() => {
        const value = element.getAttribute(attribute);
        if (seen[seen.length - 1] !== value) seen.push(value);
    }).observe(element, {attributes: true, attributeFilter: [attribute]});
}"""
# The page's pending timers (installed after Playwright's fake ones, so it sees the timers the page starts).
TRACK_TIMERS = """(() => {
    const pending = (window.pendingTimers = new Set());
    window.timersStarted = 0;
    const [setT, clearT, setI, clearI] = [setTimeout, clearTimeout, setInterval, clearInterval];
    window.setTimeout = (callback, ms, ...rest) => {
        window.timersStarted += 1;
        const id = setT((...args) => (pending.delete("t" + id), callback(...args)), ms, ...rest);
        pending.add("t" + id);
        return id;
    };
    window.clearTimeout = (id) => (pending.delete("t" + id), clearT(id));
    window.setInterval = (callback, ms, ...rest) => {
        window.timersStarted += 1;
        const id = setI(callback, ms, ...rest);
        pending.add("i" + id);
        return id;
    };
    window.clearInterval = (id) => (pending.delete("i" + id), clearI(id));
})();"""
STALE_LABEL = re.compile(r"^no ticks for \d+ s$")
# Every text an element shows from now on, in window.texts[id].
RECORD_TEXT = """(id) => {
    const element = document.getElementById(id);
    window.texts = window.texts || {};
    const texts = (window.texts[id] = []);
    new MutationObserver(() => texts.push(element.textContent)).observe(
        element, {childList: true, characterData: true, subtree: true}
    );
}"""


@dataclass
class Ticker:
    process: subprocess.Popen[str]

    def send(self, at: datetime) -> str:
        """Send one tick for ``at`` to the clock group; its iso, once sent."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(at.isoformat() + "\n")
        stdin.flush()
        line = stdout.readline().strip()
        assert line, f"the ticker exited {self.process.poll()}"
        return line


@pytest.fixture(scope="module")
def ticker(alpha_alone: AlphaAlone) -> Iterator[Ticker]:
    """Alpha has no beat here: the only ticks are the test's."""
    with (alpha_alone.deployment.workdir / "ticker.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", TICKER],
            env=alpha_alone.deployment.env("alpha"),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        yield Ticker(process)
    finally:
        stdin: IO[str] | None = process.stdin
        if stdin is not None:
            stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def clock_user(alpha_alone: AlphaAlone) -> str:
    alpha_alone.event("insert", "71", 1, username="tic", first_name="Tic", is_active=True)
    return "tic"


def open_live(
    alpha_alone: AlphaAlone, context: Any, username: str, path: str, fake_timers: bool = False
) -> tuple[Any, list[Any]]:
    """A page of alpha signed in as ``username``, live, and the websockets it opens (recorded from the start).

    With fake timers the test can jump the page's time (Playwright's clock); it flows as usual otherwise.
    """
    from playwright.sync_api import expect

    cookie = session_cookie(alpha_alone.deployment, "alpha", username)
    context.add_cookies([{"name": "sessionid", "value": cookie, "url": alpha_alone.alpha.url}])
    page = context.new_page()
    sockets: list[Any] = []
    page.on("websocket", lambda socket: sockets.append(socket))
    if fake_timers:
        page.clock.install()
        page.add_init_script(TRACK_TIMERS)
    page.goto(alpha_alone.alpha.url + path)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    page.evaluate(RECORD, ["connection", "data-state"])
    if path == "/clock/":
        page.evaluate(RECORD, ["clock", "datetime"])
    return page, sockets


def seen(page: Any, element_id: str) -> list[str]:
    return list(page.evaluate(f"window.seen[{element_id!r}]"))


def test_a_tick_from_the_future_does_not_freeze_the_clock(
    alpha_alone: AlphaAlone, context: Any, ticker: Ticker, clock_user: str
) -> None:
    from playwright.sync_api import expect

    page, _ = open_live(alpha_alone, context, clock_user, "/clock/")
    clock = page.locator("#clock")
    # A little ahead of the tick sent on connect (which may be made after the page shows "live").
    now = datetime.now(UTC) + timedelta(seconds=1)
    expect(clock).to_have_attribute("datetime", ticker.send(now))
    # A beat host 30 s ahead: shown (nothing tells the page it is wrong)...
    expect(clock).to_have_attribute("datetime", ticker.send(now + timedelta(seconds=30)))
    # ... and the next ordinary tick, 29.5 s older, is a correction: shown at once, not in 30 s.
    ordinary = ticker.send(now + timedelta(seconds=0.5))
    expect(clock).to_have_attribute("datetime", ordinary, timeout=3 * SECONDS)
    # A tick 1 s older than the one shown is late (delivery, reordering): dropped, the clock never goes back.
    late = ticker.send(now - timedelta(seconds=0.5))
    marker = ticker.send(now + timedelta(seconds=1))
    expect(clock).to_have_attribute("datetime", marker)
    assert late not in seen(page, "clock")


def test_a_silent_clock_is_shown_stale_then_reconnected(
    alpha_alone: AlphaAlone, context: Any, ticker: Ticker, clock_user: str
) -> None:
    from playwright.sync_api import expect

    page, sockets = open_live(alpha_alone, context, clock_user, "/clock/", fake_timers=True)
    clock, state = page.locator("#clock"), page.locator("#connection")
    # No beat: nothing after the tick sent on connect. The open socket must not pass for a live clock.
    expect(state).to_have_attribute("data-state", "stale", timeout=15 * SECONDS)
    expect(state).to_have_text(STALE_LABEL)
    # Any message ends it.
    expect(clock).to_have_attribute("datetime", ticker.send(datetime.now(UTC)))
    expect(state).to_have_attribute("data-state", "live")
    page.clock.fast_forward("04")
    expect(state).to_have_attribute("data-state", "stale")
    assert len(sockets) == 1

    # Still silent 10 s on: the socket is dropped, and a new one opened through the backoff.
    with page.expect_websocket(timeout=15 * SECONDS) as reconnected:
        page.clock.fast_forward("12")
    assert reconnected.value.url.endswith("/time/tic/")
    expect(state).to_have_attribute("data-state", "live")
    if not sockets[0].is_closed():
        sockets[0].wait_for_event("close")
    states = seen(page, "connection")
    assert states[-4:] == ["stale", "reconnecting", "connecting", "live"], states
    # Ticks flow again: shown, live.
    expect(clock).to_have_attribute("datetime", ticker.send(datetime.now(UTC)))
    expect(state).to_have_attribute("data-state", "live")

    # Silent again right after: the stream stopped at its source (the beat), not on the path (this socket
    # opened and greeted). The next drop waits twice as long: pages do not all reconnect every 10 s while
    # the beat is down.
    page.clock.fast_forward("12")
    expect(state).to_have_attribute("data-state", "stale")
    assert len(sockets) == 2
    with page.expect_websocket(timeout=15 * SECONDS):
        page.clock.fast_forward("10")
    assert len(sockets) == 3


def test_a_stopped_server_is_not_shown_live(
    alpha_alone: AlphaAlone, context: Any, ticker: Ticker, clock_user: str
) -> None:
    """SIGSTOP: the TCP connection stays up and silent, and the closing handshake is never answered."""
    from playwright.sync_api import expect

    page, sockets = open_live(alpha_alone, context, clock_user, "/clock/", fake_timers=True)
    clock, state = page.locator("#clock"), page.locator("#connection")
    server = alpha_alone.alpha.process
    assert server is not None
    server.send_signal(signal.SIGSTOP)
    try:
        expect(state).to_have_attribute("data-state", "stale", timeout=15 * SECONDS)
        # The reconnect does not wait for the old socket's close (a minute, on a dead path).
        with page.expect_websocket(timeout=15 * SECONDS):
            page.clock.fast_forward("12")
        expect(state).to_have_attribute("data-state", "connecting")
        assert not sockets[0].is_closed()
    finally:
        server.send_signal(signal.SIGCONT)
    expect(state).to_have_attribute("data-state", "live")
    expect(clock).to_have_attribute("datetime", ticker.send(datetime.now(UTC)))
    assert len(sockets) == 2


def test_a_silent_clock_whose_session_is_gone_ends_signed_out(
    alpha_alone: AlphaAlone, context: Any, clock_user: str
) -> None:
    """The watchdog's reconnect still checks the session, and no timer outlives the final state."""
    from playwright.sync_api import expect

    page, sockets = open_live(alpha_alone, context, clock_user, "/clock/", fake_timers=True)
    state = page.locator("#connection")
    context.clear_cookies()
    page.clock.fast_forward("12")
    expect(state).to_have_attribute("data-state", "signed-out")
    opened = len(sockets)
    for _ in range(3):
        page.clock.fast_forward("01:00")
    expect(state).to_have_attribute("data-state", "signed-out")
    assert len(sockets) == opened == 2
    assert seen(page, "connection")[-1] == "signed-out"
    assert page.evaluate("window.timersStarted") >= 2  # the watchdog and the backoff were seen...
    assert page.evaluate("[...window.pendingTimers]") == []  # ... and none is left


def test_a_user_page_that_hears_nothing_for_a_minute_reconnects(
    alpha_alone: AlphaAlone, context: Any, clock_user: str
) -> None:
    """The server sends a heartbeat every 20 s: a page that hears none for 60 s is on a dead path (a laptop
    asleep, a NAT that forgot it), which the browser may take minutes to notice, or never."""
    from playwright.sync_api import expect

    page, sockets = open_live(alpha_alone, context, clock_user, "/", fake_timers=True)
    state = page.locator("#connection")
    page.clock.fast_forward("30")
    expect(state).to_have_attribute("data-state", "live")
    assert len(sockets) == 1
    with page.expect_websocket(timeout=15 * SECONDS) as reconnected:
        page.clock.fast_forward("31")
    assert reconnected.value.url.endswith("/ws/")
    expect(state).to_have_attribute("data-state", "live")
    assert seen(page, "connection")[-3:] == ["reconnecting", "connecting", "live"]


def test_back_online_a_page_starts_over_at_once(
    alpha_alone: AlphaAlone, context: Any, clock_user: str
) -> None:
    """A network change: the socket that looks open may be on a path that is gone. The page drops it and
    connects again at once, without waiting for TCP to give up."""
    from playwright.sync_api import expect

    page, sockets = open_live(alpha_alone, context, clock_user, "/")
    with page.expect_websocket(timeout=5 * SECONDS):
        page.evaluate("window.dispatchEvent(new Event('online'))")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    if not sockets[0].is_closed():
        sockets[0].wait_for_event("close")
    assert len(sockets) == 2


def test_a_handshake_never_answered_is_given_up_and_retried(
    alpha_alone: AlphaAlone, context: Any, clock_user: str
) -> None:
    """A stopped server (or a proxy that takes connections and never answers) held the page on
    "connecting…" until the browser's own timeout, minutes."""
    from playwright.sync_api import expect

    page, sockets = open_live(alpha_alone, context, clock_user, "/", fake_timers=True)
    state = page.locator("#connection")
    server = alpha_alone.alpha.process
    assert server is not None
    server.send_signal(signal.SIGSTOP)
    try:
        with page.expect_websocket(timeout=15 * SECONDS):
            page.evaluate("window.dispatchEvent(new Event('online'))")
        expect(state).to_have_attribute("data-state", "connecting")
        page.clock.fast_forward("11")
        expect(state).to_have_attribute("data-state", "reconnecting")
        with page.expect_websocket(timeout=15 * SECONDS):
            page.clock.fast_forward("02")
        expect(state).to_have_attribute("data-state", "connecting")
    finally:
        server.send_signal(signal.SIGCONT)
    expect(state).to_have_attribute("data-state", "live")
    assert len(sockets) >= 3


def test_the_stale_counter_is_not_read_out_every_second(
    alpha_alone: AlphaAlone, context: Any, clock_user: str
) -> None:
    """The status is a live region: a screen reader reads every change of its text. Only changes of state
    go there; the counter of seconds without ticks stays on the visible label."""
    from playwright.sync_api import expect

    page, _ = open_live(alpha_alone, context, clock_user, "/clock/", fake_timers=True)
    page.evaluate(RECORD_TEXT, "connection-announce")
    state = page.locator("#connection")
    page.clock.fast_forward("04")
    expect(state).to_have_attribute("data-state", "stale")
    for _ in range(4):
        page.clock.fast_forward("01")
    expect(state).to_have_text(STALE_LABEL)
    labels = page.evaluate("window.texts['connection-announce']")
    assert len(labels) == 1 and STALE_LABEL.match(labels[0]), labels
    assert page.locator("#connection-announce").get_attribute("role") == "status"
    assert page.locator("#connection").get_attribute("role") is None


def test_a_sign_out_in_another_tab_ends_this_ones_signed_out_with_nothing_personal_left(
    alpha_alone: AlphaAlone, context: Any
) -> None:
    """The sign-out closes the session's sockets (4001); the pages reconnect, are refused, ask whether the
    session is gone, and say so, their user's name and email no longer on screen."""
    from playwright.sync_api import expect

    alpha_alone.event("insert", "91", 1, username="sol", first_name="Sol", email="sol@corp", is_active=True)
    home, _ = open_live(alpha_alone, context, "sol", "/")  # a session of sol's, in this browser's cookie
    expect(home.locator("#email")).to_have_text("sol@corp")
    ticking, other_tab = context.new_page(), context.new_page()
    for page in (ticking, other_tab):
        page.goto(alpha_alone.alpha.url + "/clock/")
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    other_tab.click("text=sign out")
    expect(other_tab).to_have_url(re.compile(r"/login/$"))
    for page in (home, ticking):
        expect(page.locator("#connection")).to_have_attribute("data-state", "signed-out")
    expect(home.locator("#email")).to_have_text("")
    expect(home.locator("#first-name")).to_have_text("")
    assert "sol@corp" not in home.content()  # nor in the page's initial state, for Inspect to show


@pytest.mark.parametrize(
    ("key", "change", "label"),
    [
        ("81", {"action": "update", "is_active": False}, "account disabled: signed out"),
        ("82", {"action": "delete"}, "account removed"),
    ],
)
def test_the_clock_page_of_an_account_that_ended_stops_for_good(
    alpha_alone: AlphaAlone, context: Any, key: str, change: dict[str, Any], label: str
) -> None:
    """The server closes the clock socket with the user socket's code; the page says so and stays closed."""
    from playwright.sync_api import expect

    username = f"ends{key}"
    alpha_alone.event("insert", key, 1, username=username, first_name="Ends", is_active=True)
    page, sockets = open_live(alpha_alone, context, username, "/clock/")
    fields = {name: value for name, value in change.items() if name != "action"}
    alpha_alone.event(str(change["action"]), key, 2, **fields)
    state = page.locator("#connection")
    expect(state).to_have_attribute("data-state", "ended")
    expect(state).to_have_text(label)
    page.wait_for_timeout(1500)  # longer than the first reconnect's backoff: none is made
    assert len(sockets) == 1
