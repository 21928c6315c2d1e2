"""Websockets from this site's own pages only: the Origin must be the origin the socket is opened on.

Channels' AllowedHostsOriginValidator accepts any origin whose host is in ALLOWED_HOSTS, ports ignored:
the sites of one `reactive up` (one host, a port each), or sites that share an ALLOWED_HOSTS list, would
accept each other's pages. A page of beta could then open alpha's /ws/ with the browser's cookies for
that host and read the signed-in user's profile. Here the Origin must name the host and port of the
socket's own Host header, as Django's CSRF check asks of a form post, or be in CSRF_TRUSTED_ORIGINS
(behind a proxy that rewrites Host). Refused handshakes close before accept: a 403.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _host_and_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    """(host without brackets, lowercased; port, the scheme's default when absent); None if unreadable."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number, or out of range
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname.lower(), port


def same_origin(scope: dict[str, Any]) -> bool:
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    if not origin or not host:
        return False
    if origin in getattr(settings, "CSRF_TRUSTED_ORIGINS", ()):
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https"):
        return False
    mine = _host_and_port(host, parts.scheme)
    return mine is not None and _host_and_port(parts.netloc, parts.scheme) == mine


class SameOriginValidator:
    """ASGI middleware: a websocket handshake whose Origin is not the socket's own origin is refused."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not same_origin(scope):
            await receive()  # the websocket.connect event
            await send({"type": "websocket.close", "code": 1008})
            return None
        return await self.application(scope, receive, send)
