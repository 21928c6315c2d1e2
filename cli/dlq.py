"""`reactive dlq list/show/purge`: look at dead letters without consuming them, and purge them."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cli import common
from cli.completion import client_names
from reactive import dlq
from reactive.transport import get_transport

app = typer.Typer(
    name="dlq",
    help="Inspect and purge a client's dead-letter queue (messages stay there: looking never consumes).",
    no_args_is_help=True,
)

CLIENT = typer.Option(..., "--client", "-c", help="Client name.", autocompletion=client_names)
BODY_WIDTH = 48
WIDE_COLUMNS = 120  # a terminal at least this wide also shows the start of each body in `dlq list`


@app.command("list")
def list_(
    client: str = CLIENT,
    limit: int = typer.Option(100, "--limit", "-n", min=1, max=10_000, help="At most this many messages."),
    diagnose: bool = typer.Option(
        False,
        "--diagnose",
        help="Try each decodable event against this client's replica (rolled back) to say why.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document, bodies whole."),
) -> None:
    """List dead letters: id, sent time, receives, what the body is, and why it failed.

    Looking never consumes: each message is received and released at once. The receive count is SQS's
    (looks count too).

    Example: [bold]reactive dlq list --client alpha --limit 20[/bold]
    """
    letters, in_dlq = _letters(client, limit, diagnose)
    if as_json:
        common.print_json(
            {
                "client": client,
                "count": len(letters),
                "in_dlq": in_dlq,
                "messages": [x.to_dict() for x in letters],
            }
        )
        return
    shown = f"{len(letters)} of {in_dlq}" if len(letters) < in_dlq else str(len(letters))
    common.console.print(_table(f"dead letters of {client} ({shown})", letters))
    if not letters and not in_dlq:
        common.console.print("[green]The DLQ is empty.[/]")
    elif len(letters) < min(limit, in_dlq):
        common.console.print(
            f"[yellow]{in_dlq - len(letters)} more not shown[/]: in flight (a replay or another look holds "
            "them), or, on a FIFO queue, behind the first messages of their group, which SQS locks while "
            "they are looked at. Look again, or replay."
        )


@app.command()
def show(
    message_id: str = typer.Argument(
        ..., help="A message id from `reactive dlq list` (its first characters are enough)."
    ),
    client: str = CLIENT,
    diagnose: bool = typer.Option(False, "--diagnose", help="Try the event against this client's replica."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show one dead letter whole: body pretty-printed, attributes, and why it failed.

    Example: [bold]reactive dlq show --client alpha 6f1c2a0e[/bold]
    """
    transport = get_transport()
    letter = dlq.find(transport, dlq.queues_of(transport, common.client_name(client)), message_id)
    if diagnose:
        common.setup_django("client", client)
        letter = dlq.diagnose([letter])[0]
    if as_json:
        common.print_json(letter.to_dict())
        return
    facts = Table.grid(padding=(0, 2))
    data = letter.to_dict()
    for name in ("message_id", "sent_at", "receive_count", "group_id", "action", "key", "version", "why"):
        if data[name] is not None:
            facts.add_row(f"[bold]{name}[/]", Text(str(data[name])))
    for name, value in data["message_attributes"].items():
        facts.add_row(
            f"[bold]attribute {escape(name)}[/]",
            Text(f"{value.get('StringValue', value.get('BinaryValue'))} ({value['DataType']})"),
        )
    common.console.print(Panel(facts, title=f"dead letter of {client}"))
    from rich.syntax import Syntax  # only `show` needs it, and it is slow to import

    body = dlq.pretty_body(letter.message.body)
    lexer = "json" if body != letter.message.body or body.lstrip().startswith("{") else "text"
    common.console.print(Syntax(body, lexer, word_wrap=True))


@app.command()
def purge(
    client: str = CLIENT,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Delete every message in a client's DLQ (SQS allows one purge a minute).

    Example: [bold]reactive dlq purge --client alpha --yes[/bold]
    """
    transport = get_transport()
    queues = dlq.queues_of(transport, common.client_name(client))
    if not yes:
        typer.confirm(f"Delete every message in {queues.dlq}? This cannot be undone", abort=True)
    count = dlq.purge(transport, queues)
    common.console.print(f"Purged {queues.dlq} ({count} message(s)).", markup=False)


def _letters(client: str, limit: int, diagnose: bool) -> tuple[list[dlq.DeadLetter], int]:
    """What a look found, and how many messages the DLQ holds (visible, in flight or delayed)."""
    transport = get_transport()
    queues = dlq.queues_of(transport, common.client_name(client))
    letters = dlq.inspect(transport, queues, limit=limit)
    depth = transport.depth(queues.dlq)
    if diagnose and any(x.event for x in letters):
        common.setup_django("client", client)
        letters = dlq.diagnose(letters)
    return letters, max(len(letters), depth.visible + depth.in_flight + depth.delayed)


def _table(title: str, letters: list[dlq.DeadLetter]) -> Table:
    """One row a letter. Below WIDE_COLUMNS the body column is left out (`dlq show` has it whole), so that the
    reason keeps room for its words."""
    with_body = common.console.width >= WIDE_COLUMNS
    table = Table(title=title)
    # Short ids, as git shows hashes (`dlq show` takes them; --json has them whole): a full one is 36
    # columns, a third of what an 80-column terminal has.
    ids = dlq.short_ids([x.message_id for x in letters])
    table.add_column("id", no_wrap=True)
    table.add_column("sent (UTC)", no_wrap=True)
    table.add_column("recv", justify="right")
    table.add_column("event")
    table.add_column("why it failed", ratio=2)
    if with_body:
        table.add_column("body", ratio=1, overflow="ellipsis")
    for letter in letters:
        sent = letter.sent_at.strftime("%m-%d %H:%M:%S") if letter.sent_at else "?"
        row: list[str | Text] = [
            ids[letter.message_id],
            sent,
            str(letter.message.receive_count),
            Text(_event(letter)),  # what a message holds is text, never markup: a poison body may hold "[/x]"
            Text(letter.why, style="red" if letter.error else ""),
        ]
        if with_body:
            row.append(Text(_short(letter.message.body)))
        table.add_row(*row)
    return table


def _event(letter: dlq.DeadLetter) -> str:
    event = letter.event
    return f"{event.action} {event.key} v{event.version}" if event else "-"


def _short(body: str) -> str:
    flat = " ".join(body.split())
    return flat if len(flat) <= BODY_WIDTH else flat[: BODY_WIDTH - 1] + "…"


def register(root: typer.Typer) -> None:
    root.add_typer(app)
