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
PENDING_SIGN_INS = "reactive.sso.pending"  # session key: the links this browser opened, not yet confirmed
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
    """Clients keep no passwords: explain that sign-in starts on the master, and link to it."""
    # Read here, not at start-up: a wrong link is no reason to stop the site, nor its listener and beat,
    # which read the same settings.
    try:
        master_url = settings.master_url()
    except ConfigError as exc:
        log.warning("sign-in page without a link to the master: %s", exc)
        master_url = ""
    context = {"client": settings.current_client(), "master_url": master_url}
    return render(request, "web/login.html", context)


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
    """A form Django's CSRF check refused. Its token: most likely a page made before this browser signed in
    or out (another tab), said so. Its origin or referer: another site's form, or a proxy in front of this
    one whose https:// origin is not in DJANGO_CSRF_TRUSTED_ORIGINS, which the operator must hear of."""
    foreign = reason.startswith(("Origin checking failed", "Referer checking failed"))
    if foreign:
        log.warning("form refused (CSRF): %s; behind a TLS proxy, see DJANGO_CSRF_TRUSTED_ORIGINS", reason)
    else:
        log.info("form refused (CSRF): %s", reason)
    context = {"client": settings.current_client(), "foreign": foreign}
    return render(request, "web/stale.html", context, status=403)


def _active_replica(key: str, username: str, client: str) -> Any:
    """The replica user a link signs in, or LinkRefused saying why there is none to sign in."""
    user = replica_user(key, username)
    if user is None:
        raise sso.LinkRefused("unknown", f"{username} has no account on {client} (not synced yet?).")
    if not user.is_active:
        raise sso.LinkRefused("inactive", f"The account {username} is disabled on {client}.")
    return user


def _ask_to_confirm(request: HttpRequest, client: str) -> HttpResponse:
    token = request.GET.get("token", "")
    # A reload of this browser's own page stays valid as long as its confirmation does.
    claim = sso.verify(token, client, max_age=sso.MAX_AGE_SECONDS + CONFIRM_SECONDS)
    pending = _pending_sign_ins(request)
    first_use = claim.nonce not in pending
    if first_use:
        sso.verify(token, client)  # fresh: 60 s
    user = _active_replica(claim.key, claim.username, client)
    if first_use:  # unused, and spent here
        unused = mark_used(claim.nonce, claim.username, keep=USED_LINKS_KEPT)
        if request.user.is_authenticated and request.user.pk == user.pk:
            return redirect("home")  # already signed in as this user (maybe by this link): nothing to do
        if not unused:
            raise sso.LinkRefused(
                "used", "This login link has already been used; ask the master for a new one."
            )
        pending[claim.nonce] = {"key": claim.key, "username": claim.username, "at": time.time()}
        newest = sorted(pending.items(), key=lambda item: item[1]["at"])[-PENDING_KEPT:]
        request.session[PENDING_SIGN_INS] = dict(newest)
    current = request.user.get_username() if request.user.is_authenticated else ""
    context = {"client": client, "username": user.get_username(), "nonce": claim.nonce, "current": current}
    return render(request, "web/confirm.html", context)


def _sign_in_confirmed(request: HttpRequest, client: str) -> HttpResponse:
    pending = _pending_sign_ins(request)
    claimed = pending.pop(request.POST.get("nonce", ""), None)
    request.session[PENDING_SIGN_INS] = pending
    if claimed is None or time.time() - float(claimed["at"]) > CONFIRM_SECONDS:
        raise sso.LinkRefused(
            "unconfirmed",
            f"This sign-in was not confirmed on {client}'s page in the browser that opened the link, "
            f"within {CONFIRM_SECONDS // 60} minutes of opening it.",
        )
    user = _active_replica(claimed["key"], claimed["username"], client)  # it may have changed meanwhile
    # Replicas have no usable password: the master vouched for this user, so no backend authenticates.
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    log.info("%s signed in on %s by master link", claimed["username"], client)
    return redirect("home")


def _pending_sign_ins(request: HttpRequest) -> dict[str, dict[str, Any]]:
    """The links this browser opened and has not confirmed yet, by nonce (one per tab it opened them in)."""
    pending = request.session.get(PENDING_SIGN_INS)
    return dict(pending) if isinstance(pending, dict) else {}
