"""What every command shares: the consoles, Django set-up for a site, JSON output, the --debug flag."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

from reactive.settings import FALSE_WORDS

console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
state = {"debug": os.environ.get("REACTIVE_DEBUG", "").strip().lower() not in FALSE_WORDS}


def client_name(name: str, option: str = "--client") -> str:
    """A client name given on the command line: a malformed one is a usage error (exit 2)."""
    from reactive import settings
    from reactive.errors import ConfigError, UsageError

    try:
        return settings.validate_client(name)
    except ConfigError as exc:
        raise UsageError(f"{option}: {exc}") from exc


def setup_django(site: str, client: str | None = None) -> None:
    """Configure Django for the master or a client site, unless the caller already chose settings."""
    from reactive.errors import UsageError

    if client:
        os.environ["REACTIVE_CLIENT"] = client_name(client)
    elif (
        site == "client"
        and not os.environ.get("REACTIVE_CLIENT")
        and _default_settings("client_site.settings")
    ):
        raise UsageError("which client? pass --client NAME or set REACTIVE_CLIENT")
    default = "master_site.settings" if site == "master" else "client_site.settings"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", default)
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    if site == "client" and client:
        _require_client_settings(client)
    if site == "master":
        _require_master_settings()


def _default_settings(module: str) -> bool:
    # Settings of a project's own may name the client themselves (REACTIVE_CLIENT = "alpha").
    return os.environ.get("DJANGO_SETTINGS_MODULE", module) == module


def require_database(site: str) -> None:
    """Refuse to work on a SQLite file that does not exist: opening it would create an empty database."""
    from django.db import connections

    from reactive.errors import ConfigError
    from reactive.status import missing_sqlite_file

    missing = missing_sqlite_file(connections["default"].settings_dict)
    if missing:
        module = os.environ.get("DJANGO_SETTINGS_MODULE", f"{site}_site.settings")
        raise ConfigError(
            f"no {site} database at {missing} (never migrated?): run `DJANGO_SETTINGS_MODULE={module} "
            "python -m django migrate`, or point DATABASE_URL at it (`source var/up.env` for `reactive up`'s)"
        )


def _require_master_settings() -> None:
    """The settings in use must be the master's: a client's (exported in every client container; they name
    REACTIVE_CLIENT) would read the client's outbox, and `login-link` would take a replica's local pk for
    the master key, which signs the link's holder in as whichever master user has that key. Settings
    that play both sides (REACTIVE_SITE = "both", as the tests' do) may."""
    from django.conf import settings

    from reactive.errors import ConfigError

    configured = getattr(settings, "REACTIVE_CLIENT", None)
    if configured and getattr(settings, "REACTIVE_SITE", None) not in ("master", "both"):
        module = os.environ.get("DJANGO_SETTINGS_MODULE", "")
        raise ConfigError(
            f"DJANGO_SETTINGS_MODULE={module} is the settings of client {configured!r}, and this command "
            "works on the master's database: run it where the master runs, or with "
            "DJANGO_SETTINGS_MODULE=master_site.settings and the master's DATABASE_URL (settings that serve "
            'both sides say so with REACTIVE_SITE = "both")'
        )


def _require_client_settings(client: str) -> None:
    """The settings in use must be this client's: the master's (DJANGO_SETTINGS_MODULE exported for `sync`,
    say) would apply the client's queue to the master's own users, and capture would publish them."""
    from django.conf import settings

    from reactive.errors import ConfigError

    configured = getattr(settings, "REACTIVE_CLIENT", None)
    if configured != client:
        module = os.environ.get("DJANGO_SETTINGS_MODULE", "")
        found = f"the settings of client {configured!r}" if configured else "not a client site's settings"
        raise ConfigError(
            f"DJANGO_SETTINGS_MODULE={module} is {found}, not client {client!r}'s: "
            "unset it (client_site.settings is the default) or point it at this client's settings"
        )


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str, sort_keys=True) + "\n")
    sys.stdout.flush()
