from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable

import typer
from rich.markup import escape

from cli import common
from cli.completion import SITE_CLIENT
from reactive.errors import ReactiveError, ServiceUnavailable


def tail(
    group: list[str] = typer.Argument(None, help="Groups to join, e.g. clock or user.42."),
    user: str = typer.Option(
        None, "--user", "-u", help="Also join this user's personal group (by username)."
    ),
    client: str = SITE_CLIENT,
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line: at, group, type, payload."),
) -> None:
    """Join channel-layer groups and print every message as it arrives, as browsers in them see it.

    Ctrl-C leaves the groups and exits 0.

    Example: [bold]reactive tail clock --user alice --json[/bold]
    """
    common.setup_django("client", client)
    from reactive.tail import Received, check_groups

    names = list(group or [])
    if user:
        names.append(personal_group(user))
    if not names:
        raise typer.BadParameter("name at least one group, or --user", param_hint="GROUP")
    names = check_groups(names)
    require_redis()

    def show(message: Received) -> None:
        if as_json:
            common.print_json(message.to_dict())
            return
        when = message.at.strftime("%H:%M:%S.%f")[:-3]
        payload = json.dumps(message.payload, default=str, sort_keys=True)
        where, kind = escape(message.group), escape(message.type)
        common.console.print(
            f"[dim]{when}[/] [cyan]{where}[/] [bold]{kind}[/] {escape(payload)}",
            soft_wrap=True,
            highlight=False,
        )

    def joined(chosen: list[str]) -> None:
        common.err_console.print(f"following {', '.join(chosen)}; Ctrl-C to stop")

    asyncio.run(_follow(names, show, joined))


async def _follow(names: list[str], show: Callable[..., None], joined: Callable[[list[str]], None]) -> None:
    from reactive.tail import follow

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await follow(names, show, stop, on_joined=joined)


def personal_group(username: str) -> str:
    from django.contrib.auth import get_user_model

    from reactive.groups import user_group

    common.require_database("client")  # a lookup in a missing SQLite file would create an empty one
    local_pk = (
        get_user_model()._default_manager.filter(username=username).values_list("pk", flat=True).first()
    )
    if local_pk is None:
        raise ReactiveError(f"no user {username!r} on this client")
    return user_group(local_pk)


def require_redis() -> None:
    from reactive import settings
    from reactive.health import check_redis

    problem = check_redis()
    if problem:
        raise ServiceUnavailable(f"cannot reach Redis at {settings.shown_redis_url()}: {problem}")


def register(app: typer.Typer) -> None:
    app.command()(tail)
