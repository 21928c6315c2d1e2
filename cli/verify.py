"""`reactive verify`: compare the master and a client's replica; exit 1 when they differ."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from cli import common
from cli.completion import client_names
from reactive import settings

STYLE = {"missing": "red", "extra": "yellow", "stale": "cyan"}


def verify(
    client: str = typer.Option(..., "--client", "-c", help="Client name.", autocompletion=client_names),
    master_db: str = typer.Option(
        None, "--master-db", help="The master's database URL; default: DATABASE_URL (or var/master.sqlite3)."
    ),
    client_db: str = typer.Option(
        None,
        "--client-db",
        help="The client's database URL; default: DATABASE_URL_<CLIENT>, DATABASE_URL with {client}, "
        "or var/client-NAME.sqlite3.",
    ),
    advance_sequence: bool = typer.Option(
        False,
        "--advance-sequence",
        help="When the client holds versions the master's outbox has not issued (its database restored from "
        "a backup), move the outbox sequence past them; then run `reactive sync --client NAME --prune`.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Compare the master and a client's replica by key, version and content; exit 1 when they differ.

    Opens both databases from here (the operator reaches both sides) with the master's settings.

    Example: [bold]reactive verify --client alpha --client-db postgres://ops@db/alpha[/bold]
    """
    common.client_name(client)
    master_url = master_db or settings.database_url("master")
    client_url = client_db or settings.database_url("client", client)
    common.setup_django("master")
    from reactive.verify import verify as compare_sites

    report = compare_sites(client, master_url, client_url, advance_sequence=advance_sequence)
    if as_json:
        common.print_json(report.to_dict())
    else:
        render(report)
    if not report.ok:
        raise typer.Exit(1)


def render(report: object) -> None:
    from reactive.verify import VerifyReport

    assert isinstance(report, VerifyReport)
    if report.advanced_to is not None:
        common.console.print(
            f"[yellow]{report.client} held version {report.replica_top_version}, above the master's outbox "
            f"sequence[/]: advanced it to {report.advanced_to}. Now run `reactive sync --client "
            f"{report.client} --prune` (and verify every other client the same way)."
        )
    if report.sequence_behind:
        common.console.print(
            f"[red]{report.client} holds version {report.replica_top_version}, above the last outbox id the "
            f"master issued ({report.outbox_sequence})[/]: was the master's database restored from a backup? "
            "Every change, a sync's too, would be skipped there as stale. Advance the master's outbox "
            f"sequence past {report.replica_top_version} (`reactive verify --client {report.client} "
            f"--advance-sequence`), then run `reactive sync --client {report.client} --prune`."
        )
        if not report.differences:
            return
    if report.ok:
        common.console.print(
            f"[green]{report.client} matches the master[/]: {report.master_rows} synced user(s), "
            f"same keys, versions and {', '.join(report.fields)}."
        )
        return
    table = Table(title=f"{report.client} differs from the master")
    for column in ("kind", "key", "username", "master v", "replica v", "detail"):
        table.add_column(column, overflow="fold")
    for d in report.differences:
        table.add_row(
            f"[{STYLE[d.kind]}]{d.kind}[/]",
            Text(d.key),
            Text(d.username),
            _version(d.master_version),
            _version(d.replica_version),
            Text(d.detail),  # holds users' values: text, never markup
        )
    common.console.print(table)
    counts = ", ".join(f"{report.count(k)} {k}" for k in ("missing", "extra", "stale"))
    common.console.print(
        f"{counts} (master {report.master_rows}, replica {report.replica_rows}); "
        f"`reactive sync --client {report.client} --prune` repairs it."
    )


def _version(value: int | None) -> str:
    return "-" if value is None else str(value)


def register(app: typer.Typer) -> None:
    app.command()(verify)
