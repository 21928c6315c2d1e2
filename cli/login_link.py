from __future__ import annotations

import typer

from cli import common
from cli.completion import client_names
from reactive.errors import ReactiveError


def login_link(
    username: str = typer.Argument(..., help="A user of the master."),
    client: str = typer.Option(
        ..., "--client", "-c", help="The client site the link signs in to.", autocompletion=client_names
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Print a signed login link for a master user on one client: valid 60 seconds, once.

    Runs against the master (its database and REACTIVE_SSO_KEY); the client URL comes from
    REACTIVE_CLIENT_URLS.

    Example: [bold]reactive login-link alice --client alpha[/bold]
    """
    common.setup_django("master")
    common.require_database("master")
    from django.contrib.auth import get_user_model

    from reactive import sso

    common.client_name(client)
    user = get_user_model()._default_manager.filter(username=username).first()
    if user is None:
        raise ReactiveError(f"no user {username!r} on the master")
    refused = sso.refusal(user)
    if refused:
        raise ReactiveError(f"{refused}: {client} would refuse a link")
    url = sso.login_url(user, client)
    if as_json:
        common.print_json(
            {"url": url, "username": username, "client": client, "expires_in": sso.MAX_AGE_SECONDS}
        )
    else:
        typer.echo(url)  # plain: a rich console would wrap the long URL


def register(app: typer.Typer) -> None:
    app.command("login-link")(login_link)
