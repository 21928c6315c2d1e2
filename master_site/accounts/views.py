from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseForbidden,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import render
from django.urls import reverse_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from reactive import sso
from reactive.health import live as live_response
from reactive.health import response as health_response

# Synced users are not staff, so the admin's login page would refuse them: the master has its own.
LOGIN_URL = reverse_lazy("login")


def health(request: HttpRequest) -> JsonResponse:
    """200 when the database and Redis answer, 503 naming what failed."""
    return health_response()


async def live(request: HttpRequest) -> HttpResponse:
    """200 {"ok": true}, asking nothing (liveness); under uvicorn asgi.py answers it before Django."""
    return await live_response(request)


@login_required(login_url=LOGIN_URL)
@require_GET
def clients(request: HttpRequest) -> HttpResponse:
    """The signed-in user's way into each client site: one "open" link per client."""
    rows = [{"name": name, "url": url} for name, url in sorted(sso.client_urls().items())]
    return render(request, "accounts/clients.html", {"clients": rows, "refused": sso.refusal(request.user)})


@never_cache
@login_required(login_url=LOGIN_URL)
@require_GET
def open_client(request: HttpRequest, client: str) -> HttpResponse:
    """Mint a fresh login link at the moment of the click (links live 60 s) and go there."""
    if client not in sso.client_urls():
        raise Http404(f"no client named {client}")
    refused = sso.refusal(request.user)
    if refused:  # the client would refuse the link: say why here, where it can be fixed
        return HttpResponseForbidden(f"{refused}.", content_type="text/plain; charset=utf-8")
    return HttpResponseRedirect(sso.login_url(request.user, client))
