"""`reactive status`: queue depths, dead letters and subscriptions per client; the master's outbox backlog."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from cli import common
from cli.completion import client_names
from reactive import settings
from reactive.errors import ReactiveError
from reactive.status import DEFAULT_MAX_AGE, OutboxStatus, Report, collect, outbox_status
from reactive.transport.base import QueueDepth


def status(
    client: list[str] = typer.Option(
        None,
        "--client",
        "-c",
        help="Client name (repeat); default REACTIVE_CLIENTS.",
        autocompletion=client_names,
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    check: bool = typer.Option(
        False,
        "--check",
        help="Exit 1 when a DLQ is not empty, a resource is missing, or the outbox lags or cannot be read"
        " although DATABASE_URL names it (monitoring).",
    ),
    max_age: float = typer.Option(
        DEFAULT_MAX_AGE,
        "--max-age",
        min=0,
        help="--check: the oldest pending outbox row may be this many seconds old.",
    ),
) -> None:
    """Per client: queue visible / in flight / delayed, DLQ depth, subscription; master: outbox backlog.

    The outbox part reads the master's database (master_site settings, DATABASE_URL); where that database
    is not reachable from here, the AWS part is still shown and the output says so. With --check, a master
    database that DATABASE_URL names but that cannot be read is a problem; with none named, it is skipped.

    Example: [bold]reactive status --check --max-age 120[/bold]
    """
    clients = [common.client_name(c) for c in client] if client else settings.clients()
    report = collect(clients, _outbox(), max_age=max_age)
    if as_json:
        common.print_json(report.to_dict())
    else:
        render(report)
    if check and report.problems():
        raise typer.Exit(1)


def _outbox() -> OutboxStatus:
    from django.core.exceptions import ImproperlyConfigured
    from django.db import DatabaseError

    configured = settings.database_named("master")
    try:
        common.setup_django("master")
        return outbox_status(configured=configured)
    except (ReactiveError, ImproperlyConfigured, ImportError, DatabaseError) as exc:
        detail = f"master settings not usable here: {' '.join(str(exc).split())}"
        return OutboxStatus(False, detail=detail, configured=configured)


def render(report: Report) -> None:
    table = Table(title=f"reactive status (topic {report.topic})")
    for column, justify in (
        ("client", "left"),
        ("queue", "right"),
        ("in flight", "right"),
        ("delayed", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("DLQ", justify="right")
    table.add_column("subscription")
    for c in report.clients:
        q = c.queue_depth
        table.add_row(
            c.client,
            _count(q, "visible"),
            _count(q, "in_flight"),
            _count(q, "delayed"),
            "[red]missing[/]"
            if c.dlq_depth is None
            else (f"[red]{c.dead_letters}[/]" if c.dead_letters else "0"),
            _subscription(c.subscription.present, c.subscription.raw_delivery),
        )
    common.console.print(table)
    common.console.print(_outbox_line(report.outbox))
    problems = report.problems()
    for problem in problems:
        common.console.print(f"[yellow]![/] {escape(problem)}")
    if not problems:
        checked = (
            "All good." if report.outbox.available else "AWS side all good (the outbox was not checked)."
        )
        common.console.print(f"[green]{checked}[/]")


def _count(depth: QueueDepth | None, name: str) -> str:
    return "[red]missing[/]" if depth is None else str(getattr(depth, name))


def _subscription(present: bool, raw: bool) -> str:
    if not present:
        return "[red]missing[/]"
    return "[green]raw delivery[/]" if raw else "[yellow]not raw[/]"


def _outbox_line(outbox: OutboxStatus) -> str:
    if not outbox.available:
        return f"master outbox: [yellow]unknown[/] ({outbox.detail})"
    age = outbox.oldest_age_seconds
    oldest = "" if age is None else f", oldest {age:.0f} s old"
    failing = (
        f", [red]{outbox.failing} failing[/] (last error: {escape(outbox.last_error)})"
        if outbox.failing
        else ""
    )
    return f"master outbox: {outbox.pending} pending{oldest}{failing}"


def register(app: typer.Typer) -> None:
    app.command()(status)
