"""The one place that reads configuration: the environment first, Django settings second."""

from __future__ import annotations

import math
import os
import re
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from reactive.errors import ConfigError

DEFAULT_PREFIX = "reactive"
DEFAULT_CLIENTS = ("alpha", "beta")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_REGION = "us-east-1"
DEV_SSO_KEY = "reactive-development-sso-key-do-not-use-in-production"
CLIENT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")  # whole name: fullmatch ("$" lets "alpha\n" through)
MIN_CLOCK_INTERVAL = 0.05  # seconds; a faster clock is a busy loop, not a clock


def _django_setting(name: str, default: Any = None) -> Any:
    """A Django setting when Django is configured; the default otherwise (CLI before setup)."""
    try:
        from django.conf import settings

        if settings.configured:
            return getattr(settings, name, default)
    except ImportError:  # pragma: no cover - Django is a dependency
        pass
    return default


def env_or_setting(name: str, default: Any = None) -> Any:
    value = os.environ.get(name)
    if value not in (None, ""):
        return value
    return _django_setting(name, default)


def validate_client(name: str) -> str:
    if not isinstance(name, str) or not CLIENT_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid client name {name!r}: use lowercase letters, digits, '-' or '_' (at most 40 characters)"
        )
    return name


@dataclass(frozen=True)
class Names:
    """AWS resource names derived from the prefix (DESIGN.md: topic, queue and DLQ names)."""

    prefix: str
    fifo: bool = False

    @property
    def _suffix(self) -> str:
        return ".fifo" if self.fifo else ""

    @property
    def topic(self) -> str:
        return f"{self.prefix}-users{self._suffix}"

    def queue(self, client: str) -> str:
        return _queue_name(f"{self.prefix}-{client}{self._suffix}")

    def dlq(self, client: str) -> str:
        return _queue_name(f"{self.prefix}-{client}-dlq{self._suffix}")


MAX_QUEUE_NAME = 80  # SQS


def _queue_name(name: str) -> str:
    if len(name) > MAX_QUEUE_NAME:
        raise ConfigError(
            f"queue name {name!r} is {len(name)} characters, SQS allows {MAX_QUEUE_NAME}: "
            "shorten REACTIVE_PREFIX or the client's name"
        )
    return name


def prefix() -> str:
    value = str(env_or_setting("REACTIVE_PREFIX", DEFAULT_PREFIX))
    if not re.match(r"^[A-Za-z0-9_-]{1,60}$", value):
        raise ConfigError(f"invalid REACTIVE_PREFIX {value!r}: letters, digits, '-' and '_' only")
    return value


def fifo() -> bool:
    """REACTIVE_FIFO: the FIFO topic and queues. A word that is neither on nor off is refused: read as off,
    a typo would send the master's events to the standard topic while the clients poll FIFO queues."""
    value = env_or_setting("REACTIVE_FIFO", "")
    return value if isinstance(value, bool) else _on_off("REACTIVE_FIFO", str(value))


def names(use_fifo: bool | None = None) -> Names:
    return Names(prefix(), fifo() if use_fifo is None else use_fifo)


def clients() -> list[str]:
    raw = env_or_setting("REACTIVE_CLIENTS", ",".join(DEFAULT_CLIENTS))
    items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
    return [validate_client(c.strip()) for c in items if c.strip()]


def current_client() -> str:
    value = env_or_setting("REACTIVE_CLIENT")
    if not value:
        raise ConfigError(
            "REACTIVE_CLIENT is not set: which client is this process? (e.g. REACTIVE_CLIENT=alpha)"
        )
    return validate_client(str(value))


def aws_endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or None


def aws_region() -> str:
    return os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or DEFAULT_REGION


REDIS_SCHEMES = ("redis", "rediss", "unix")  # what redis-py's from_url reads


def redact(url: str) -> str:
    """The URL without its password (in its user part, or any ``*password`` query parameter, which redis-py
    and libpq read), for messages and logs."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(_secret(name) for name, _ in pairs)  # password=, ssl_password=, encoded or not
    if parts.password is None and not secret_query:
        return url  # as given: urlunsplit would write "sqlite:////abs" as "sqlite://abs"
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    if secret_query:
        query = urlencode([(name, "***" if _secret(name) else value) for name, value in pairs], safe="*:/")
        parts = parts._replace(query=query, fragment="")  # "password=a#b": the rest of it is the fragment
    return urlunsplit(parts)


def _secret(name: str) -> bool:
    return name.lower().endswith("password")


def shown_redis_url() -> str:
    """REDIS_URL as messages show it: without its password."""
    return redact(redis_url())


def redis_url() -> str:
    """REDIS_URL, checked: a typo is a configuration error (exit 1), not a Redis that does not answer."""
    url = str(env_or_setting("REDIS_URL", DEFAULT_REDIS_URL)).strip()
    if urlsplit(url).scheme not in REDIS_SCHEMES:
        raise ConfigError(
            f"REDIS_URL must be a redis://HOST:PORT/DB address (or rediss://, unix://), got {redact(url)!r}"
        )
    return url


def time_zone() -> str:
    """The zone the clock shows its HH:MM:SS in (Django's TIME_ZONE), UTC by default."""
    zone = str(env_or_setting("TIME_ZONE", "UTC"))
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"TIME_ZONE must be a zone name such as Europe/Paris or UTC, got {zone!r}") from exc
    return zone


CHANNEL_LAYER_BACKENDS = {  # channels-redis's layers, whose calls a cancel always ends (reactive/layers.py)
    "redis": "reactive.layers.RedisChannelLayer",
    "pubsub": "reactive.layers.RedisPubSubChannelLayer",
}
# Chosen by bench/fanout.py (docs/benchmarks.md, "fanout"): with the clock fanned out once per process
# (client_site/web/broadcast.py) both layers carry one message per process per tick; RedisChannelLayer
# had the lower p99 at 5,000 sockets, and it keeps a message for a briefly busy consumer (pub/sub drops it).
DEFAULT_CHANNEL_LAYER = "redis"


# A consumer waits on Redis with a 5 s blocking pop (channels-redis); redis-py 8 gives up reading a socket
# after 5 s by default, which ended every websocket of a quiet page. Longer than the pop, so that a dead
# connection is still found.
LAYER_SOCKET_TIMEOUT = 30.0


def channel_layers(client: str) -> dict[str, Any]:
    """CHANNEL_LAYERS of a client site: channels-redis at REDIS_URL, keys under "{prefix}-{client}".

    REACTIVE_CHANNEL_LAYER picks the backend: "redis" (lists, at-least-once to live consumers) or
    "pubsub" (Redis pub/sub, one publish per group message).
    """
    kind = str(env_or_setting("REACTIVE_CHANNEL_LAYER", DEFAULT_CHANNEL_LAYER)).lower()
    if kind not in CHANNEL_LAYER_BACKENDS:
        choices = sorted(CHANNEL_LAYER_BACKENDS)
        raise ConfigError(f"REACTIVE_CHANNEL_LAYER must be one of {choices}, got {kind!r}")
    # redis-py's asyncio pool refuses a 101st concurrent connection (MaxConnectionsError) instead of waiting:
    # a reconnect storm of pages (each connect is a group_add) would fail handshakes with the default.
    pool_size = positive_int_setting("REACTIVE_REDIS_MAX_CONNECTIONS", 1000)
    host = {"address": redis_url(), "max_connections": pool_size, "socket_timeout": LAYER_SOCKET_TIMEOUT}
    return {
        "default": {
            "BACKEND": CHANNEL_LAYER_BACKENDS[kind],
            "CONFIG": {"hosts": [host], "prefix": f"{prefix()}-{client}"},
        }
    }


def var_dir() -> Path:
    return Path(os.environ.get("REACTIVE_VAR_DIR") or Path.cwd() / "var").resolve()


def client_database_variable(client: str) -> str:
    """The variable naming one client's own database: DATABASE_URL_<CLIENT>, '-' written '_' (DATABASE_URL_MY_APP)."""
    return f"DATABASE_URL_{client.upper().replace('-', '_')}"


def database_url(site: str, client: str | None = None) -> str:
    """The database of this process: DATABASE_URL_<CLIENT>, DATABASE_URL (``{client}`` expanded), or SQLite under var/."""
    return _database_url(site, client)[1]


def database_named(site: str, client: str | None = None) -> bool:
    """Whether the environment names this process's database, rather than leaving it to var/'s SQLite."""
    return _database_url(site, client)[0] != "REACTIVE_VAR_DIR"


def _database_url(site: str, client: str | None = None) -> tuple[str, str]:
    """(the variable it came from, the URL)."""
    if client:
        specific = os.environ.get(client_database_variable(client))
        if specific:
            return client_database_variable(client), specific
    url = os.environ.get("DATABASE_URL")
    if url:
        if client and "{client}" not in url:
            _refuse_a_database_meant_for_another_site(client)
        return "DATABASE_URL", url.replace("{client}", client or site)
    filename = f"client-{client}.sqlite3" if client else f"{site}.sqlite3"
    return "REACTIVE_VAR_DIR", f"sqlite:///{var_dir() / filename}"


def _refuse_a_database_meant_for_another_site(client: str) -> None:
    """An environment that names other clients' databases (DATABASE_URL_<X>) but not this one's holds a
    DATABASE_URL meant for another site, the master's most likely (one Secret for every site): a client
    run on it would adopt the master's users as replicas and make their passwords unusable."""
    names = {client_database_variable(other) for other in clients() if other != client}
    others = sorted(name for name in names if os.environ.get(name))  # not DATABASE_URL_TEST and the like
    if others:
        raise ConfigError(
            f"{client_database_variable(client)} is not set while {', '.join(others)} "
            f"{'is' if len(others) == 1 else 'are'}: client {client} would use DATABASE_URL, which has no "
            "{client} in it and is most likely another site's database. Set "
            f"{client_database_variable(client)} (or put {{client}} in DATABASE_URL)"
        )


def sso_key(debug: bool) -> str:
    return _key("REACTIVE_SSO_KEY", DEV_SSO_KEY, debug)


def _key(name: str, development: str, debug: bool) -> str:
    """The key ``name`` holds; the development key only under DEBUG, and only for a site served on this
    machine alone: it is in this repository, so anyone could sign a login link or a session with it."""
    key = os.environ.get(name, "")
    if key and key != development:
        return key if debug else _production_key(name, key)
    if not debug:
        raise ConfigError(
            f"{name} is not set (or is the development key); the development key is refused when DEBUG is off"
        )
    foreign = [host for host in allowed_hosts() if host.lower() not in LOCAL_HOSTS]
    if foreign:
        raise ConfigError(
            f"{name} is not set, and DJANGO_ALLOWED_HOSTS serves {', '.join(foreign)}: the development key "
            f"is only for a site on this machine. Set {name} (and DJANGO_DEBUG=0 in production)"
        )
    return development


MIN_KEY_LENGTH = 32
PLACEHOLDER_KEY = re.compile(r"change-me|replace-me|changeme|secret-key-here", re.IGNORECASE)


def _production_key(name: str, key: str) -> str:
    """With DEBUG off a key must be one nobody else has: not the examples' placeholder, not short."""
    if PLACEHOLDER_KEY.search(key) or len(key) < MIN_KEY_LENGTH:
        raise ConfigError(
            f"{name} is a placeholder or shorter than {MIN_KEY_LENGTH} characters; with DEBUG off set a random "
            "one: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    return key


def debug() -> bool:
    """DJANGO_DEBUG: on when unset or empty (a local run needs nothing set); any other word than the on/off
    ones is refused, not taken for "on" ("production", a typo)."""
    value = os.environ.get("DJANGO_DEBUG", "")
    return True if not value.strip() else _on_off("DJANGO_DEBUG", value)


FALSE_WORDS = ("", "0", "false", "no", "off")
TRUE_WORDS = ("1", "true", "yes", "on")
RELAY_MODES = ("celery", "inline", "off")
TRANSPORTS = ("sqs", "memory")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def flag(name: str) -> bool:
    """An on/off variable: 1/true/yes/on or 0/false/no/off (any case), unset or empty is off."""
    return _on_off(name, os.environ.get(name, ""))


def _on_off(name: str, value: str) -> bool:
    word = value.strip().lower()
    if word in FALSE_WORDS or word in TRUE_WORDS:
        return word in TRUE_WORDS
    raise ConfigError(f"{name} must be one of 1/true/yes/on or 0/false/no/off, got {value!r}")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    chosen = str(value).strip().lower()
    if chosen not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return chosen


def relay_mode() -> str:
    """REACTIVE_RELAY: how a commit asks for its rows to be relayed (a typo must not silently turn it off)."""
    return _choice("REACTIVE_RELAY", env_or_setting("REACTIVE_RELAY", "celery"), RELAY_MODES)


def transport_kind() -> str:
    return _choice("REACTIVE_TRANSPORT", os.environ.get("REACTIVE_TRANSPORT", "sqs"), TRANSPORTS)


def log_level() -> str:
    """REACTIVE_LOG_LEVEL: any name Python's logging knows (WARN and FATAL included), INFO by default."""
    import logging

    value = os.environ.get("REACTIVE_LOG_LEVEL", "INFO")
    level = value.strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ConfigError(f"REACTIVE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def max_receives() -> int:
    """Receives before SQS moves a message to the DLQ: REACTIVE_MAX_RECEIVES, 5 by default (as SQS allows, 1-1000)."""
    value = env_or_setting("REACTIVE_MAX_RECEIVES", 5)
    try:
        count = int(str(value))  # str: a setting of 2.5 is refused, not read as 2
    except ValueError:
        count = 0
    if not 1 <= count <= 1000:
        raise ConfigError(f"REACTIVE_MAX_RECEIVES must be a whole number from 1 to 1000, got {value!r}")
    return count


def clock_interval() -> float:
    """Seconds between clock ticks: REACTIVE_CLOCK_INTERVAL, 0.5 by default; at least 0.05."""
    interval = float_setting("REACTIVE_CLOCK_INTERVAL", 0.5)
    if interval < MIN_CLOCK_INTERVAL:
        raise ConfigError(
            f"REACTIVE_CLOCK_INTERVAL must be at least {MIN_CLOCK_INTERVAL} s, got {interval:g}"
        )
    return interval


def clock_schedule_interval() -> float:
    """clock_interval() for the client's Celery beat schedule: a value under the minimum is raised to it
    rather than refused, since every client process (web, listener) imports the settings that hold it."""
    return max(MIN_CLOCK_INTERVAL, float_setting("REACTIVE_CLOCK_INTERVAL", 0.5))


MIN_SWEEP_INTERVAL = 1.0  # seconds; Celery beat sends a schedule of 0 or less back to back, flooding Redis


def sweep_interval() -> float:
    """Seconds between outbox sweeps (the master's beat): REACTIVE_SWEEP_INTERVAL, 5 by default, raised to
    at least MIN_SWEEP_INTERVAL rather than refused (every master process imports the settings that hold
    the schedule)."""
    return max(MIN_SWEEP_INTERVAL, float_setting("REACTIVE_SWEEP_INTERVAL", 5.0))


def heartbeat_template() -> str:
    """REACTIVE_HEARTBEAT_FILE as given (``{client}`` unexpanded), or "" when unset."""
    return str(env_or_setting("REACTIVE_HEARTBEAT_FILE", "") or "").strip()


def heartbeat_file(client: str | None = None) -> Path | None:
    """The file a listener or clock beat touches as its loop goes round (reactive/heartbeat.py), if any.

    ``{client}`` in it becomes the client's name (``client``, else REACTIVE_CLIENT), as in DATABASE_URL.
    """
    raw = heartbeat_template()
    if "{client}" in raw:
        raw = raw.replace("{client}", validate_client(client) if client else current_client())
    return Path(raw) if raw else None


def float_setting(name: str, default: float) -> float:
    value = env_or_setting(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return number


def positive_int_setting(name: str, default: int) -> int:
    value = env_or_setting(name, default)
    try:
        number = int(str(value).strip())
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from exc
    if number < 1:
        raise ConfigError(f"{name} must be at least 1, got {value!r}")
    return number


def django_database(site: str, client: str | None = None) -> dict[str, Any]:
    """DATABASES["default"] for a site, from DATABASE_URL (dj-database-url) or SQLite under var/."""
    import dj_database_url

    variable, url = _database_url(site, client)
    # No persistent connections: under ASGI each request may run on another thread, and Django's docs say to
    # disable them there (they piled up until PostgreSQL refused new ones). The listener keeps its own.
    try:
        config: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=0))
    except ValueError as exc:  # UnknownSchemeError is one: "bogus", "postgresql+psycopg://", a bare path
        raise ConfigError(
            f"{variable} cannot be read ({exc}): use postgres://USER@HOST:PORT/NAME or sqlite:////ABS/PATH"
        ) from exc
    if config["ENGINE"].endswith("sqlite3"):
        folder = Path(config["NAME"]).parent
        try:
            # This user's alone, when we make it: the master's file holds password hashes (an existing
            # folder keeps the modes its owner chose).
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:  # REACTIVE_VAR_DIR (or the URL's path) names a file, or a place not ours
            raise ConfigError(
                f"{variable}: cannot make the folder {folder} for its SQLite file: {exc}"
            ) from exc
        config["CONN_MAX_AGE"] = 0
        # WAL lets the listener, the web process and workers read while one writes; IMMEDIATE avoids
        # lock-upgrade deadlocks between writers.
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    return config


DEV_SECRET_KEY = "reactive-development-secret-key-not-for-production"


def secret_key(debug: bool) -> str:
    return _key("DJANGO_SECRET_KEY", DEV_SECRET_KEY, debug)


def web_settings(site: str) -> dict[str, Any]:
    """Cookies and HTTPS settings of a site ("master", or a client's name).

    Browsers keep cookies per host, not per port: the master and its clients on one host (reactive up,
    compose) would overwrite each other's CSRF cookie, and the master's session cookie would sign the
    master out whenever a client signs in. The master's are named after it; a client's session cookie
    is Django's "sessionid" unless DJANGO_SESSION_COOKIE_NAME names another (`reactive up` and compose
    give each client its own, so that two clients on one host keep their sign-ins apart). Behind a
    TLS-terminating proxy (DJANGO_SECURE_PROXY=1) the sites trust its X-Forwarded-Proto and send cookies
    over HTTPS only; DJANGO_CSRF_TRUSTED_ORIGINS lists the https:// origins forms are posted from.
    """
    values: dict[str, Any] = {
        "CSRF_COOKIE_NAME": f"{prefix()}-{site}-csrftoken",
        "SESSION_COOKIE_NAME": session_cookie_name(site),
    }
    origins = os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "")
    values["CSRF_TRUSTED_ORIGINS"] = [o.strip() for o in origins.split(",") if o.strip()]
    if flag("DJANGO_SECURE_PROXY"):
        values.update(
            SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"),
            SESSION_COOKIE_SECURE=True,
            CSRF_COOKIE_SECURE=True,
        )
    return values


# RFC 6265's cookie-name token: a name outside it is mangled or dropped by browsers, signing nobody in.
COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def session_cookie_name(site: str) -> str:
    """The master's own name; on a client DJANGO_SESSION_COOKIE_NAME, else Django's "sessionid"."""
    if site == "master":  # never the clients' variable: a value shared in compose's .env would clash
        return f"{prefix()}-master-session"
    name = os.environ.get("DJANGO_SESSION_COOKIE_NAME", "").strip() or "sessionid"
    if not COOKIE_NAME.fullmatch(name):
        raise ConfigError(
            f"DJANGO_SESSION_COOKIE_NAME {name!r} is not a cookie name (letters, digits and !#$%&'*+.^_`|~-)"
        )
    return name


# Host names that reach this machine only (Django's test client asks for "testserver").
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1", "testserver"})


def allowed_hosts() -> list[str]:
    # Never "*": the websocket origin check (AllowedHostsOriginValidator) relies on this list.
    raw = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
    return [h.strip() for h in raw.split(",") if h.strip()]


def client_urls() -> dict[str, str]:
    """REACTIVE_CLIENT_URLS="alpha=http://127.0.0.1:8000,beta=http://127.0.0.1:8002" (up's ports by default)."""
    raw = os.environ.get("REACTIVE_CLIENT_URLS", "")
    if raw:
        return dict(_client_url(item) for item in raw.split(",") if item.strip())
    names = clients()
    return {
        name: f"http://127.0.0.1:{port}"
        for name, port in zip(names, default_client_ports(len(names)), strict=True)
    }


def _client_url(item: str) -> tuple[str, str]:
    name, equals, url = (part.strip() for part in item.partition("="))
    parts = urlsplit(url)
    if not equals or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            "REACTIVE_CLIENT_URLS must list NAME=http(s)://HOST[:PORT] pairs separated by commas, "
            f"got {item.strip()!r}"
        )
    return validate_client(name), url.rstrip("/")


DEFAULT_MASTER_URL = "http://127.0.0.1:8001"  # `reactive up`'s master on this machine


def master_url() -> str:
    """REACTIVE_MASTER_URL: where browsers reach the master site; a client's sign-in page links to it.

    Unset: `reactive up`'s master on this machine under DEBUG, "" (no link) otherwise: a production page
    must not send people to 127.0.0.1."""
    raw = str(env_or_setting("REACTIVE_MASTER_URL", "") or "").strip().rstrip("/")
    if not raw:
        return DEFAULT_MASTER_URL if debug() else ""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"REACTIVE_MASTER_URL must be an http(s) address such as https://master.example.com, got {raw!r}"
        )
    return raw


def default_client_ports(count: int) -> list[int]:
    """The ports `reactive up` gives the client sites: 8000, then 8002, 8003, ... (the master has 8001)."""
    return [8000, *range(8002, 8002 + max(0, count - 1))][:count]


def serve_static() -> bool:
    """REACTIVE_SERVE_STATIC: the sites serve their static files themselves (default: when DEBUG is on)."""
    raw = os.environ.get("REACTIVE_SERVE_STATIC", "")
    return debug() if raw == "" else raw.lower() in ("1", "true", "yes", "on")


def celery_settings(role: str) -> dict[str, Any]:
    """CELERY_* Django settings: Redis broker, no result backend, short publish retries so a save never hangs.

    Each role (master, client-alpha, ...) has its own queue, so that sites sharing one Redis never take
    each other's tasks.
    """
    return {
        "CELERY_TASK_DEFAULT_QUEUE": f"{prefix()}-{role}",
        "CELERY_BROKER_URL": redis_url(),
        "CELERY_TASK_IGNORE_RESULT": True,
        "CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP": True,
        "CELERY_BROKER_CONNECTION_TIMEOUT": 2,
        "CELERY_TASK_PUBLISH_RETRY_POLICY": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        "CELERY_BROKER_TRANSPORT_OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 5},
        "CELERY_WORKER_HIJACK_ROOT_LOGGER": False,
        "CELERY_TASK_ACKS_LATE": True,
    }


def logging_config() -> dict[str, Any]:
    level = log_level()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line"}},
        "loggers": {
            "reactive": {"handlers": ["stderr"], "level": level, "propagate": False},
            # A 500's traceback: Django only prints it itself under DEBUG, and mails nobody here. Under DEBUG
            # its 4xx warnings ("Not Found: ...") too, as Django's own console handler did.
            "django.request": {
                "handlers": ["stderr"],
                "level": "WARNING" if debug() else "ERROR",
                "propagate": False,
            },
        },
    }
