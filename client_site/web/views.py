"""Pages of a client site: the live user page, the clock, the initial state, sign-in by master link."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.request import split_domain_port, validate_host
from django.middleware.csrf import REASON_NO_CSRF_COOKIE
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from client_site.web.models import mark_used
from client_site.web.profiles import current_profile, replica_user
from reactive import clock, settings, sso
from reactive.errors import ConfigError, ServiceUnavailable
from reactive.health import live as live_response
from reactive.health import response as health_response

log = logging.getLogger("reactive.web")
# A link's age is measured with the master's clock, its use with ours: kept far longer than a link lives, a
# used nonce stays refused even where the two clocks disagree by minutes.
USED_LINKS_KEPT = timedelta(days=1)
# From arriving with a login link to pressing "continue" on the page that names the account.
CONFIRM_SECONDS = 300
PENDING_SIGN_INS = "reactive.sso.opened"  # session key: the links this browser opened, not yet confirmed
PENDING_KEPT = 10  # the newest of them (one per tab), so that the session stays small
View = Callable[..., HttpResponse]

# The pages run only their own scripts: even if some user text reached the DOM as markup, no inline
# script or handler (onerror=...) could run. 'self' covers ws:/wss: to this host in connect-src.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def strict_csp(view: View) -> View:
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response

    return wrapped


def health(request: HttpRequest) -> JsonResponse:
    """200 when the database and Redis answer, 503 naming what failed."""
    return health_response()


async def live(request: HttpRequest) -> HttpResponse:
    """200 {"ok": true}, asking nothing (liveness); under uvicorn asgi.py answers it before Django."""
    return await live_response(request)


def _current_tick() -> clock.Tick:
    try:
        return clock.current() or clock.payload()
    except ServiceUnavailable as exc:
        log.warning("clock state unavailable, showing the local time: %s", exc)
        return clock.payload()


# never_cache on the pages that show the user: after a sign-out, Back must not show the last user's name
# and email from the browser's cache.
@strict_csp
@never_cache
@login_required(login_url="login")
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The live page: "Hello <first name>", kept current over the user's own room (/ws/)."""
    return render(request, "web/home.html", {"profile": current_profile(request.user)})


@strict_csp
@never_cache
@login_required(login_url="login")
@require_GET
def clock_page(request: HttpRequest) -> HttpResponse:
    """The time, rendered at once from Redis and kept current over /time/tic/."""
    return render(request, "web/clock.html", {"tick": _current_tick()})


@never_cache
@require_GET
def initial_state(request: HttpRequest) -> JsonResponse:
    """``{"current": {"profile": ..., "clock": ...}}`` for the signed-in user; 401 (JSON) otherwise."""
    if not request.user.is_authenticated:
        return JsonResponse({"error": "login required"}, status=401)
    return JsonResponse({"current": {"profile": current_profile(request.user), "clock": _current_tick()}})


@strict_csp
@require_GET
def login_page(request: HttpRequest) -> HttpResponse:
    """Clients keep no passwords: explain that sign-in starts on the master, and link to it."""
    # Read here, not at start-up: a wrong link is no reason to stop the site, nor its listener and beat,
    # which read the same settings.
    try:
        master_url = settings.master_url()
    except ConfigError as exc:
        _warn_once(f"sign-in page without a link to the master: {exc}")
        master_url = ""
    context = {"client": settings.current_client(), "master_url": master_url}
    return render(request, "web/login.html", context)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """A set-up problem seen on every request: logged once per process, not once per page."""
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("login")


@never_cache
@strict_csp
@require_http_methods(["GET", "POST"])
def sso_login(request: HttpRequest) -> HttpResponse:
    """Follow a master login link: checked and spent by this browser, then confirmed by whoever is at it.

    The GET checks the link (valid, fresh, unused, for this client, an active replica), spends it, keeps
    it in this browser's session and asks "continue as alice?"; only that page's POST, CSRF-checked, from
    the same session within CONFIRM_SECONDS, signs in. A link that someone forwards (to sign a victim into
    the forwarder's account, a login CSRF) cannot sign anyone in unseen: the page names the account and
    nothing happens without its button. A link copied after its owner opened it is already spent. A
    browser already signed in as the link's user goes straight on; a reload shows the page again.
    """
    client = settings.current_client()
    try:
        if request.method == "POST":
            return _sign_in_confirmed(request, client)
        return _ask_to_confirm(request, client)
    except sso.LinkRefused as refused:
        log.info("login link refused (%s): %s", refused.reason, refused)
        context = {"reason": refused.reason, "message": str(refused), "client": client}
        return render(request, "web/refused.html", context, status=403)


@strict_csp
def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form Django's CSRF check refused, and why, in the site's words. Its token: most likely a page made
    before this browser signed in (another tab). Its origin or referer: another site's form, or this site's
    own host through a TLS proxy whose https:// origin is not in DJANGO_CSRF_TRUSTED_ORIGINS. No cookie
    back: cookies blocked, or secure cookies over plain HTTP. The set-up cases are warnings."""
    kind = _csrf_failure_kind(request, reason)
    if kind == "stale":
        log.info("form refused (CSRF): %s", reason)
    elif kind == "foreign":  # anyone's page can post here: not worth a warning each time
        log.info("form refused (CSRF), from another site: %s", reason)
    else:  # this site's own pages refused: the set-up, which the operator must hear of
        log.warning("form refused (CSRF): %s; %s", reason, CSRF_SETUP_HINTS[kind])
    context = {"client": settings.current_client(), "kind": kind}
    return render(request, "web/stale.html", context, status=403)


CSRF_SETUP_HINTS = {
    "proxy": "behind a TLS proxy, list the site's https:// origin in DJANGO_CSRF_TRUSTED_ORIGINS",
    "cookie": "the browser sent no CSRF cookie: cookies blocked, or DJANGO_SECURE_PROXY=1 (secure cookies) "
    "on a site served over plain HTTP",
}


def _csrf_failure_kind(request: HttpRequest, reason: str) -> str:
    """stale (a form older than a sign-in), foreign (another site's), proxy or cookie (the set-up)."""
    if reason == REASON_NO_CSRF_COOKIE:
        return "cookie"
    if reason.startswith(("Origin checking failed", "Referer checking failed")):
        origin = request.headers.get("Origin") or request.headers.get("Referer") or ""
        host, _port = split_domain_port(urlsplit(origin).netloc)  # a TLS proxy may listen on its own port
        return "proxy" if host and validate_host(host, django_settings.ALLOWED_HOSTS) else "foreign"
    return "stale"


def _active_replica(key: str, username: str, client: str, user: Any = None) -> Any:
    """The replica user a link signs in (``user``, when already read), or LinkRefused saying why there is
    none to sign in."""
    user = user if user is not None else replica_user(key, username)
    if user is None:
        raise sso.LinkRefused("unknown", f"{username} has no account on {client} (not synced yet?).")
    if not user.is_active:
        raise sso.LinkRefused("inactive", f"The account {username} is disabled on {client}.")
    return user


def _ask_to_confirm(request: HttpRequest, client: str) -> HttpResponse:
    token = request.GET.get("token", "")
    # Checked first for as long as a confirmation can last: a reload, or the back button after Continue.
    claim = sso.verify(token, client, max_age=sso.MAX_AGE_SECONDS + CONFIRM_SECONDS)
    pending = _pending_sign_ins(request)
    opened = pending.get(claim.nonce)
    if opened is None:
        signed_in_as = request.user.pk if request.user.is_authenticated else None
        user = replica_user(claim.key, claim.username)
        if user is not None and signed_in_as == user.pk:
            mark_used(claim.nonce, claim.username, keep=USED_LINKS_KEPT)  # spent, whatever it was
            return redirect("home")  # already signed in as this user (maybe by this link): nothing to do
        sso.verify(token, client)  # a link's first use: fresh (60 s)
        user = _active_replica(claim.key, claim.username, client, user)
        if not mark_used(claim.nonce, claim.username, keep=USED_LINKS_KEPT):  # unused, and spent here
            raise sso.LinkRefused(
                "used", "This login link has already been used; ask the master for a new one."
            )
        pending[claim.nonce] = {"key": claim.key, "username": claim.username, "at": time.time()}
        newest = sorted(pending.items(), key=lambda item: item[1]["at"])[-PENDING_KEPT:]
        request.session[PENDING_SIGN_INS] = dict(newest)
    else:  # this browser's own page again
        _in_time(opened, client)
        user = _active_replica(claim.key, claim.username, client)
    current = request.user.get_username() if request.user.is_authenticated else ""
    context = {"client": client, "username": user.get_username(), "nonce": claim.nonce, "current": current}
    return render(request, "web/confirm.html", context)


def _sign_in_confirmed(request: HttpRequest, client: str) -> HttpResponse:
    pending = _pending_sign_ins(request)
    popped = pending.pop(request.POST.get("nonce", ""), None)
    if popped is not None:
        request.session[PENDING_SIGN_INS] = pending  # written only when it held the link
    claimed = _in_time(popped, client)
    user = _active_replica(claimed["key"], claimed["username"], client)  # it may have changed meanwhile
    if request.user.is_authenticated and request.user.pk != user.pk:
        # login() would flush the other user's session without user_logged_out: that user's pages open in
        # other tabs would go on streaming their data into a browser now someone else's. A sign-out
        # first closes them (signouts.py).
        logout(request)
    # Replicas have no usable password: the master vouched for this user, so no backend authenticates.
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    log.info("%s signed in on %s by master link", claimed["username"], client)
    return redirect("home")


def _in_time(opened: dict[str, Any] | None, client: str) -> dict[str, Any]:
    """The link this browser opened, CONFIRM_SECONDS ago at most; LinkRefused otherwise."""
    if opened is None or time.time() - opened["at"] > CONFIRM_SECONDS:
        raise sso.LinkRefused(
            "unconfirmed",
            f"This sign-in was not confirmed on {client}'s page in the browser that opened the link, "
            f"within {CONFIRM_SECONDS // 60} minutes of opening it.",
        )
    return opened


def _pending_sign_ins(request: HttpRequest) -> dict[str, dict[str, Any]]:
    """The links this browser opened and has not confirmed yet, by nonce (one per tab it opened them in).

    Only well-formed entries: a session is kept for weeks, across releases that may have stored another
    shape here."""
    stored = request.session.get(PENDING_SIGN_INS)
    if not isinstance(stored, dict):
        return {}
    return {
        nonce: entry
        for nonce, entry in stored.items()
        if isinstance(entry, dict)
        and isinstance(entry.get("key"), str)
        and isinstance(entry.get("username"), str)
        and isinstance(entry.get("at"), int | float)
    }
