from __future__ import annotations

import typer

from cli import common
from cli.completion import client_names


def listen(
    client: list[str] = typer.Option(
        ..., "--client", "-c", help="Client name; repeat to run several.", autocompletion=client_names
    ),
    once: bool = typer.Option(
        False, "--once", help="Drain what is visible now; exit at the first empty receive."
    ),
    batch: int = typer.Option(10, "--batch", min=1, max=10, help="Messages per receive (SQS allows 10)."),
    wait: float = typer.Option(20, "--wait", min=0, max=20, help="Long-poll seconds."),
) -> None:
    """Apply the master's changes to a client's replica and notify its browsers.

    One --client runs in this process; several run one child process each under a supervisor,
    each with its own database (DATABASE_URL_<CLIENT>, DATABASE_URL with {client}, or var/client-NAME.sqlite3).

    REACTIVE_HEARTBEAT_FILE names a file touched as the loop goes round (for a liveness probe:
    python -m reactive.heartbeat --max-age 200); with several clients it stays fresh while every child's does.

    Example: [bold]reactive listen --client alpha --client beta[/bold]
    """
    clients = [common.client_name(c) for c in client]
    if len(set(clients)) != len(clients):
        raise typer.BadParameter("a client is named twice", param_hint="--client")
    if len(clients) == 1:
        common.setup_django("client", clients[0])
        from reactive.listener import serve

        serve(clients[0], once=once, batch=batch, wait=wait)
        return
    from reactive.heartbeat import relay_for
    from reactive.supervisor import Supervisor, listener_spec

    specs = [listener_spec(c, once=once, batch=batch, wait=wait) for c in clients]
    relay = relay_for(specs)  # REACTIVE_HEARTBEAT_FILE: fresh while every child's own file is
    if relay:
        relay.start()
    supervisor = Supervisor(specs, on_change=relay.child_changed if relay else None)
    raise typer.Exit(supervisor.run(restart=not once, tick=relay.tick if relay else None))


def register(app: typer.Typer) -> None:
    app.command()(listen)
