from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from reactive.health import check_services


def health(request: HttpRequest) -> JsonResponse:
    """200 when the database and Redis answer, 503 naming what failed."""
    report = check_services()
    return JsonResponse(report, status=200 if report["ok"] else 503)
