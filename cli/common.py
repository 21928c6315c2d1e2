"""What every command shares: the consoles, Django set-up for a site, JSON output, the --debug flag."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
state = {"debug": os.environ.get("REACTIVE_DEBUG", "") not in ("", "0")}


def setup_django(site: str, client: str | None = None) -> None:
    """Configure Django for the master or a client site, unless the caller already chose settings."""
    if client:
        os.environ["REACTIVE_CLIENT"] = client
    default = "master_site.settings" if site == "master" else "client_site.settings"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", default)
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str, sort_keys=True) + "\n")
    sys.stdout.flush()
