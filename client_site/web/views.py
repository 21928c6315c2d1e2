"""Pages of a client site: the live user page, the clock, the initial state, sign-in by master link."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from client_site.web.models import mark_used
from client_site.web.profiles import current_profile, replica_user
from reactive import clock, settings, sso
from reactive.errors import ServiceUnavailable
from reactive.health import live as live_response
from reactive.health import response as health_response

log = logging.getLogger("reactive.web")
# A link's age is measured with the master's clock, its use with ours: kept far longer than a link lives, a
# used nonce stays refused even where the two clocks disagree by minutes.
USED_LINKS_KEPT = timedelta(days=1)
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


@strict_csp
@require_GET
def sso_login(request: HttpRequest) -> HttpResponse:
    """Follow a master login link: valid, fresh, unused and for this client, or refused with a clear page."""
    client = settings.current_client()
    try:
        claim = sso.verify(request.GET.get("token", ""), client)
        user = replica_user(claim.key, claim.username)
        if user is None:
            raise sso.LinkRefused(
                "unknown", f"{claim.username} has no account on {client} (not synced yet?)."
            )
        if not user.is_active:
            raise sso.LinkRefused("inactive", f"The account {claim.username} is disabled on {client}.")
        if not mark_used(claim.nonce, claim.username, keep=USED_LINKS_KEPT):
            raise sso.LinkRefused(
                "used", "This login link has already been used; ask the master for a new one."
            )
    except sso.LinkRefused as refused:
        log.info("login link refused (%s): %s", refused.reason, refused)
        context = {"reason": refused.reason, "message": str(refused), "client": client}
        return render(request, "web/refused.html", context, status=403)
    # Replicas have no usable password: the master vouched for this user, so no backend authenticates.
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    log.info("%s signed in on %s by master link", claim.username, client)
    return redirect("home")
