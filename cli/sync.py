"""`reactive sync`: send the master's current state of every synced user to one client."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli import common
from cli.completion import client_names


def sync(
    client: str = typer.Option(..., "--client", "-c", help="Client name.", autocompletion=client_names),
    batch: int = typer.Option(200, "--batch", min=1, max=10_000, help="Users per transaction."),
    prune: bool = typer.Option(False, "--prune", help="Also delete replica users the master no longer has."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary (no progress bar)."),
) -> None:
    """Send the master's current state of every synced user straight to one client's queue.

    Runs on the master (master_site settings, its DATABASE_URL). Safe during live traffic: versions order
    the sync with live changes and applying is idempotent. --prune sends a delete for every key the
    master lacks, so the replica drops users deleted while their delete event was lost.

    Example: [bold]reactive sync --client alpha --prune[/bold]
    """
    common.client_name(client)
    common.setup_django("master")
    common.require_database("master")
    from reactive import resync
    from reactive.dlq import queues_of
    from reactive.transport import get_transport

    transport = get_transport()
    queues_of(transport, client)  # a wrong client name fails before every user is read
    keys = resync.plan(prune=prune)
    if as_json:
        report = resync.sync(client, transport, batch=batch, prune=prune, keys=keys)
        common.print_json(report.to_dict())
    else:
        columns = (TextColumn(f"sync {client}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=common.err_console, transient=True) as progress:
            task = progress.add_task("sync", total=len(keys))
            report = resync.sync(
                client,
                transport,
                batch=batch,
                prune=prune,
                keys=keys,
                progress=lambda n: progress.advance(task, n),
            )
        render(report)
    if report.pending:
        raise typer.Exit(1)


def render(report: object) -> None:
    from reactive.resync import SyncReport

    assert isinstance(report, SyncReport)
    table = Table(title=f"sync to {report.client}")
    for column in ("examined", "users sent", "deletes sent", "relayed", "pending"):
        table.add_column(column, justify="right")
    pending = f"[red]{report.pending}[/]" if report.pending else "0"
    table.add_row(str(report.examined), str(report.updates), str(report.deletes), str(report.sent), pending)
    common.console.print(table)
    for error in report.errors:
        common.err_console.print(f"[red]relay:[/] {escape(str(error))}")
    if report.pending:
        common.err_console.print(
            f"{report.pending} row(s) wait in the outbox; the master's outbox sweep will send them."
        )


def register(app: typer.Typer) -> None:
    app.command()(sync)
