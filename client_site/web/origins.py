"""Websockets from this site's own pages only: the Origin must be the origin the socket is opened on.

Channels' AllowedHostsOriginValidator accepts any origin whose host is in ALLOWED_HOSTS, ports and schemes
ignored: the sites of one `reactive up` (one host, a port each), or sites that share an ALLOWED_HOSTS list,
would accept each other's pages. A page of beta could then open alpha's /ws/ with the browser's cookies
for that host and read the signed-in user's profile. Here the Origin must be the socket's own origin, as
Django's CSRF check asks of a form post: the scheme the request came in with (behind a TLS proxy,
SECURE_PROXY_SSL_HEADER says it), the host and port of its Host header; or one of CSRF_TRUSTED_ORIGINS
(``https://*.example.com`` included, as Django reads them). Refused handshakes close before accept: 403.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, urlsplit

from django.conf import settings
from django.utils.http import is_same_domain

DEFAULT_PORTS = {"http": 80, "https": 443}


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _scheme(scope: dict[str, Any]) -> str:
    """http or https, as Django's request.is_secure() would say of this handshake."""
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        name, secure = proxy  # ("HTTP_X_FORWARDED_PROTO", "https")
        said = _header(scope, name.removeprefix("HTTP_").lower().replace("_", "-").encode())
        if said is not None:
            return "https" if said.split(",", 1)[0].strip() == secure else "http"
    return "https" if scope.get("scheme") in ("wss", "https") else "http"


def _host_and_port(parts: SplitResult) -> tuple[str, int] | None:
    """(host without brackets, lowercased; port, the scheme's default when absent); None if unreadable."""
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port that is not a number, or out of range
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname.lower(), port


def _trusted(origin: str, parts: SplitResult) -> bool:
    """In CSRF_TRUSTED_ORIGINS: exactly, or under one of its ``scheme://*.domain`` entries."""
    trusted = getattr(settings, "CSRF_TRUSTED_ORIGINS", ())
    if origin in trusted:
        return True
    for entry in trusted:
        if "*" in entry:
            wildcard = urlsplit(entry)
            if wildcard.scheme == parts.scheme and is_same_domain(parts.netloc, wildcard.netloc.lstrip("*")):
                return True
    return False


def same_origin(scope: dict[str, Any]) -> bool:
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    if not origin or not host:
        return False
    try:
        parts = urlsplit(origin)
        own = urlsplit(f"{_scheme(scope)}://{host}")
    except ValueError:  # "http://[::1", an unbalanced bracket: no origin anyone's page sends
        return False
    if _trusted(origin, parts):
        return True
    if parts.scheme != own.scheme:
        return False
    mine = _host_and_port(own)
    return mine is not None and _host_and_port(parts) == mine


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
