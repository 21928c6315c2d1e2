"""Shell completion helpers shared by the operations commands."""

from __future__ import annotations

import typer

from reactive import settings
from reactive.errors import ReactiveError


def client_names(incomplete: str) -> list[str]:
    """The configured clients (REACTIVE_CLIENTS) that start with what was typed."""
    try:
        return [name for name in settings.clients() if name.startswith(incomplete)]
    except ReactiveError:  # a malformed REACTIVE_CLIENTS must not break the shell
        return []


# --client of the commands that run as one client site, REACTIVE_CLIENT's unless given (beat, tail).
SITE_CLIENT = typer.Option(
    None,
    "--client",
    "-c",
    help="The client site (default REACTIVE_CLIENT).",
    autocompletion=client_names,
)
