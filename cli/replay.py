"""`reactive replay-dlq`: move dead letters back to the client's queue, with a progress bar and a summary."""

from __future__ import annotations

import time

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cli import common
from cli.completion import client_names
from reactive import dlq
from reactive.transport import Transport, get_transport

MOVE_TASK_POLL = 2.0  # seconds between looks at a running SQS move task


def replay_dlq(
    client: str = typer.Option(..., "--client", "-c", help="Client name.", autocompletion=client_names),
    limit: int = typer.Option(None, "--limit", "-n", min=1, help="Move at most this many messages."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would move; move nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
    rate: float = typer.Option(None, "--rate", min=0.1, help="At most this many messages a second."),
    move_task: bool = typer.Option(
        False, "--move-task", help="Let SQS move them (StartMessageMoveTask) where the endpoint supports it."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary (no progress bar)."),
) -> None:
    """Move dead letters back to the client's queue, body and attributes intact.

    Sends a batch to the queue, then deletes from the DLQ only what was sent: interrupted at any point,
    a message is in the DLQ, in the queue, or at worst in both (applying is idempotent).

    Example: [bold]reactive replay-dlq --client alpha --limit 100 --rate 50[/bold]
    """
    if move_task and limit is not None:
        raise typer.BadParameter(
            "--limit cannot be used with --move-task: an SQS move task moves the whole DLQ",
            param_hint="--limit",
        )
    if move_task and rate is not None and rate > dlq.MOVE_TASK_MAX_RATE:
        raise typer.BadParameter(
            f"at most {dlq.MOVE_TASK_MAX_RATE} messages a second with --move-task (SQS)", param_hint="--rate"
        )
    transport = get_transport()
    queues = dlq.queues_of(transport, common.client_name(client))
    planned = dlq.planned_count(transport, queues, limit)
    if move_task and dry_run:
        _print_move_task_plan(client, queues, planned, as_json)
        return
    if not dry_run and not yes:
        # Asked even when the DLQ reports nothing visible: the count is approximate (and lags on AWS),
        # and whatever is there by the time the replay reads it moves. On stderr: --json keeps stdout.
        how_many = f"{planned} message(s)" if planned else "the messages (it reports none visible now)"
        typer.confirm(f"Move {how_many} from {queues.dlq} back to {queues.queue}?", abort=True, err=True)
    if move_task:
        _run_move_task(transport, queues, rate, as_json)
        return
    if dry_run or as_json:
        report = dlq.replay(transport, queues, limit=limit, dry_run=dry_run, rate=rate)
    else:
        report = _with_progress(transport, queues, planned, limit, rate)
    if as_json:
        common.print_json({"client": client, **report.to_dict()})
    else:
        render(report, queues)
    if report.failed:
        raise typer.Exit(1)


def _with_progress(
    transport: Transport, queues: dlq.ClientQueues, planned: int, limit: int | None, rate: float | None
) -> dlq.ReplayReport:
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=common.err_console, transient=True) as progress:
        task = progress.add_task("replay", total=planned or None)

        def advance(count: int) -> None:
            # The count is the DLQ's depth when we started: new dead letters may arrive meanwhile.
            done = progress.tasks[0].completed + count
            progress.update(task, completed=done, total=max(planned, done))

        return dlq.replay(transport, queues, limit=limit, rate=rate, progress=advance)


def render(report: dlq.ReplayReport, queues: dlq.ClientQueues) -> None:
    if report.dry_run:
        table = Table(title=f"would move {len(report.would_move)} message(s) {queues.dlq} -> {queues.queue}")
        ids = dlq.short_ids([x.message_id for x in report.would_move])  # as `dlq list` shows them
        for column in ("id", "event", "why it failed"):
            table.add_column(column, overflow="fold")
        for letter in report.would_move:
            event = letter.event
            table.add_row(
                ids[letter.message_id],
                Text(f"{event.action} {event.key} v{event.version}" if event else "-"),
                Text(letter.why),  # from the message: text, never markup
            )
        common.console.print(table)
        return
    table = Table(title=f"replay {queues.dlq} -> {queues.queue}")
    for column in ("moved", "failed", "left in DLQ"):
        table.add_column(column, justify="right")
    table.add_row(
        f"[green]{report.moved}[/]",
        f"[red]{len(report.failed)}[/]" if report.failed else "0",
        str(report.left),
    )
    common.console.print(table)
    for message_id, reason in report.failed.items():
        common.err_console.print(f"[red]not moved[/] {message_id}: {escape(reason)}")
    for message_id, reason in report.duplicated.items():
        common.err_console.print(f"[yellow]moved, but still in the DLQ too[/] {message_id}: {escape(reason)}")


def _print_move_task_plan(client: str, queues: dlq.ClientQueues, planned: int, as_json: bool) -> None:
    if as_json:
        common.print_json({"client": client, "dry_run": True, "move_task": True, "planned": planned})
    else:
        common.console.print(
            f"would start an SQS move task for {planned} message(s) {queues.dlq} -> {queues.queue}"
        )


def _run_move_task(transport: object, queues: dlq.ClientQueues, rate: float | None, as_json: bool) -> None:
    before = dlq.latest_move_task(transport, queues)
    handle = dlq.start_move_task(transport, queues, rate=rate)
    status = dlq.move_task_status(transport, queues, handle, before)
    if not as_json:
        columns = (
            TextColumn("SQS move task"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
        )
        with Progress(*columns, console=common.err_console, transient=True) as progress:
            task = progress.add_task(status.status, total=status.to_move)
            while not status.finished:
                progress.update(task, completed=status.moved, total=status.to_move, description=status.status)
                time.sleep(MOVE_TASK_POLL)  # polling the server-side task; there is no event to wait on
                status = dlq.move_task_status(transport, queues, handle, before)
    while not status.finished:
        time.sleep(MOVE_TASK_POLL)
        status = dlq.move_task_status(transport, queues, handle, before)
    if as_json:
        common.print_json(
            {"handle": handle, "status": status.status, "moved": status.moved, "failure": status.failure}
        )
    else:
        reason = f" ({status.failure})" if status.failure else ""
        common.console.print(
            f"SQS move task {status.status.lower()}{reason}: {status.moved} message(s) moved."
        )
    if status.status != "COMPLETED":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("replay-dlq")(replay_dlq)
