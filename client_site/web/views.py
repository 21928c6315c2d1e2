"""Pages of a client site: the live user page, the clock, the initial state, sign-in by master link."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from client_site.web.models import mark_used, was_used
from client_site.web.profiles import current_profile, replica_user
from reactive import clock, settings, sso
from reactive.errors import ServiceUnavailable
from reactive.health import live as live_response
from reactive.health import response as health_response

log = logging.getLogger("reactive.web")
# A link's age is measured with the master's clock, its use with ours: kept far longer than a link lives, a
# used nonce stays refused even where the two clocks disagree by minutes.
USED_LINKS_KEPT = timedelta(days=1)
# From arriving with a login link to pressing "continue" on the page that names the account.
CONFIRM_SECONDS = 300
PENDING_SIGN_IN = "reactive.sso.pending"  # session key: the nonce of the link this browser is confirming
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


@strict_csp
@login_required(login_url="login")
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The live page: "Hello <first name>", kept current over the user's own room (/ws/)."""
    return render(request, "web/home.html", {"profile": current_profile(request.user)})


@strict_csp
@login_required(login_url="login")
@require_GET
def clock_page(request: HttpRequest) -> HttpResponse:
    """The time, rendered at once from Redis and kept current over /time/tic/."""
    return render(request, "web/clock.html", {"tick": _current_tick()})


@require_GET
def initial_state(request: HttpRequest) -> JsonResponse:
    """``{"current": {"profile": ..., "clock": ...}}`` for the signed-in user; 401 (JSON) otherwise."""
    if not request.user.is_authenticated:
        return JsonResponse({"error": "login required"}, status=401)
    return JsonResponse({"current": {"profile": current_profile(request.user), "clock": _current_tick()}})


@strict_csp
@require_GET
def login_page(request: HttpRequest) -> HttpResponse:
    """Clients keep no passwords: explain that sign-in starts on the master."""
    return render(request, "web/login.html", {"client": settings.current_client()})


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("login")


@never_cache
@strict_csp
@require_http_methods(["GET", "POST"])
def sso_login(request: HttpRequest) -> HttpResponse:
    """Follow a master login link: checked, then confirmed by whoever is at this browser.

    The GET checks the link (valid, fresh, unused, for this client, an active replica) and asks "continue
    as alice?"; only that page's POST, from the same browser within CONFIRM_SECONDS and CSRF-checked,
    signs in. A link that someone forwards (to sign a victim into the forwarder's account, a login CSRF)
    cannot sign anyone in unseen: the page names the account, and nothing happens without its button.
    A browser already signed in as the link's user goes straight on.
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


def _checked_link(token: str, client: str, max_age: float) -> tuple[sso.Claim, Any]:
    """The link's claim and the replica user it signs in, or LinkRefused saying why not."""
    claim = sso.verify(token, client, max_age=max_age)
    user = replica_user(claim.key, claim.username)
    if user is None:
        raise sso.LinkRefused("unknown", f"{claim.username} has no account on {client} (not synced yet?).")
    if not user.is_active:
        raise sso.LinkRefused("inactive", f"The account {claim.username} is disabled on {client}.")
    if was_used(claim.nonce):
        raise _used()
    return claim, user


def _used() -> sso.LinkRefused:
    return sso.LinkRefused("used", "This login link has already been used; ask the master for a new one.")


def _ask_to_confirm(request: HttpRequest, client: str) -> HttpResponse:
    token = request.GET.get("token", "")
    claim, user = _checked_link(token, client, sso.MAX_AGE_SECONDS)
    if request.user.is_authenticated and request.user.pk == user.pk:
        mark_used(claim.nonce, claim.username, keep=USED_LINKS_KEPT)  # spent here, not left to be reused
        return redirect("home")
    request.session[PENDING_SIGN_IN] = {"nonce": claim.nonce, "at": time.time()}
    current = request.user.get_username() if request.user.is_authenticated else ""
    context = {"client": client, "username": user.get_username(), "token": token, "current": current}
    return render(request, "web/confirm.html", context)


def _sign_in_confirmed(request: HttpRequest, client: str) -> HttpResponse:
    # The link was fresh when this browser arrived with it (the GET): its age now includes the reading.
    claim, user = _checked_link(request.POST.get("token", ""), client, sso.MAX_AGE_SECONDS + CONFIRM_SECONDS)
    pending = request.session.pop(PENDING_SIGN_IN, None)
    if (
        not isinstance(pending, dict)
        or pending.get("nonce") != claim.nonce
        or time.time() - float(pending.get("at", 0)) > CONFIRM_SECONDS
    ):
        raise sso.LinkRefused(
            "unconfirmed",
            f"This sign-in was not confirmed on {client}'s page in this browser within "
            f"{CONFIRM_SECONDS // 60} minutes.",
        )
    if not mark_used(claim.nonce, claim.username, keep=USED_LINKS_KEPT):
        raise _used()
    # Replicas have no usable password: the master vouched for this user, so no backend authenticates.
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    log.info("%s signed in on %s by master link", claim.username, client)
    return redirect("home")
