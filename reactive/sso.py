"""Login links from the master (the identity provider) to a client site.

A client has no passwords: the master vouches for a user with a link signed by REACTIVE_SSO_KEY
(django.core.signing). A link names the user by master key (identity survives renames), is bound to one
client, lives 60 seconds and carries a random nonce so that the client can refuse it the second time
(the client records used nonces; see client_site.web.models.UsedLoginLink).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.core import signing

from reactive import settings
from reactive.errors import ConfigError, ReactiveError

SALT = "reactive.sso.login-link"
MAX_AGE_SECONDS = 60
LOGIN_PATH = "/sso/login"


class LinkRefused(ReactiveError):
    """A login link that must not log anyone in; ``reason`` is a stable code, the message is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Claim:
    """What a valid link asserts: this master user may sign in on this client, once."""

    key: str  # the master's primary key of the user
    username: str  # for messages only; identity is the key
    client: str
    nonce: str


def _key() -> str:
    key = settings.env_or_setting("REACTIVE_SSO_KEY")
    if not key:
        raise ConfigError("REACTIVE_SSO_KEY is not set: login links cannot be signed or checked")
    return str(key)


def issue(key: Any, username: str, client: str) -> str:
    """A signed token for one sign-in of the master user ``key`` on ``client``."""
    claim = {
        "k": str(key),
        "u": username,
        "c": settings.validate_client(client),
        "n": secrets.token_urlsafe(16),
    }
    return signing.dumps(claim, key=_key(), salt=SALT, compress=True)


def client_urls() -> dict[str, str]:
    """Where each client answers: REACTIVE_CLIENT_URLS from the environment, else the Django setting."""
    configured = settings.env_or_setting("REACTIVE_CLIENT_URLS")
    if isinstance(configured, dict):
        return {name: str(url).rstrip("/") for name, url in configured.items()}
    return settings.client_urls()


def client_url(client: str) -> str:
    urls = client_urls()
    try:
        return urls[client]
    except KeyError:
        known = ", ".join(sorted(urls)) or "none"
        raise ConfigError(
            f"no URL known for client {client!r} (REACTIVE_CLIENT_URLS knows: {known})"
        ) from None


def refusal(user: Any) -> str | None:
    """Why every client would refuse this master user's link, known on the master before issuing one.

    A client signs in only its replica of an active user, and the replica exists only if the master syncs
    the user (what change capture and `reactive sync` use: REACTIVE_SYNC_PREDICATE, by default not staff).
    """
    from reactive.resync import tracking

    synced = tracking()
    name = user.get_username()
    if "is_active" in synced.fields and not getattr(user, "is_active", True):
        return f"{name} is disabled on the master, and so on every client site"
    if not synced.predicate(user):
        return f"{name} is not synced to the client sites (REACTIVE_SYNC_PREDICATE leaves the account out)"
    return None


def login_url(user: Any, client: str) -> str:
    """The link a master user follows to sign in on ``client``: ``<client url>/sso/login?token=...``."""
    token = issue(user.pk, user.get_username(), client)
    return f"{client_url(client)}{LOGIN_PATH}?{urlencode({'token': token})}"


def verify(token: str, client: str, max_age: float = MAX_AGE_SECONDS) -> Claim:
    """Check signature, age and audience. Single use is the caller's part (it owns the storage)."""
    try:
        data = signing.loads(token, key=_key(), salt=SALT, max_age=max_age)
    except signing.SignatureExpired:
        raise LinkRefused("expired", "This login link has expired; links live 60 seconds.") from None
    except signing.BadSignature:
        raise LinkRefused(
            "invalid", "This login link is not valid (altered or not signed by the master)."
        ) from None
    if not isinstance(data, dict) or not all(isinstance(data.get(f), str) for f in "kucn"):
        raise LinkRefused("invalid", "This login link is not valid (unexpected content).")
    if data["c"] != client:
        raise LinkRefused(
            "foreign", f"This login link was issued for another site ({data['c']}), not {client}."
        )
    return Claim(key=data["k"], username=data["u"], client=data["c"], nonce=data["n"])
