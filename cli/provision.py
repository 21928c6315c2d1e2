from __future__ import annotations

import typer
from rich.table import Table

from cli import common
from cli.completion import client_names
from reactive import settings
from reactive.provision import Options, Plan, Provisioner

STYLE = {"ok": "green", "create": "yellow", "update": "cyan"}


def provision(
    client: list[str] = typer.Option(
        None,
        "--client",
        "-c",
        help="Client name (repeat); default REACTIVE_CLIENTS.",
        autocompletion=client_names,
    ),
    fifo: bool = typer.Option(False, "--fifo", help="Create the FIFO variants (.fifo topic and queues)."),
    max_receives: int | None = typer.Option(
        None,
        "--max-receives",
        min=1,
        max=1000,
        help="Receives before a message is dead; default REACTIVE_MAX_RECEIVES, else 5.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create or update the topic, queues, DLQs, policies and subscriptions; idempotent.

    Example: [bold]reactive provision --client alpha --client beta --max-receives 5[/bold]
    """
    clients = [common.client_name(c) for c in client] if client else settings.clients()
    receives = max_receives or settings.max_receives()
    options = Options(clients=clients, fifo=fifo or settings.fifo(), max_receives=receives)
    plan = Provisioner(options).run(dry_run=dry_run)
    if fifo and not settings.fifo():  # everything else reads REACTIVE_FIFO, not this flag
        common.err_console.print(
            f"[yellow]warning:[/] --fifo {'would make' if dry_run else 'made'} the FIFO topic and queues; "
            "set REACTIVE_FIFO=1 where the relay, "
            "the listeners and `reactive status` run, or they keep using the standard ones"
        )
    if as_json:
        common.print_json(plan.to_dict())
    else:
        render(plan, dry_run)


def render(plan: Plan, dry_run: bool) -> None:
    table = Table(title="reactive provision" + (" (dry run)" if dry_run else ""))
    for column in ("kind", "name", "action", "detail"):
        table.add_column(column)
    for step in plan.steps:
        action = step.action if plan.applied or step.action == "ok" else f"would {step.action}"
        table.add_row(step.kind, step.name, f"[{STYLE[step.action]}]{action}[/]", step.detail)
    common.console.print(table)
    if plan.changes == 0:
        common.console.print("[green]Everything exists as wanted; nothing changed.[/]")
    elif dry_run:
        common.console.print(f"{plan.changes} change(s) planned; run without --dry-run to apply.")
    else:
        common.console.print(f"[yellow]{plan.changes} change(s) applied.[/]")


def register(app: typer.Typer) -> None:
    app.command()(provision)
