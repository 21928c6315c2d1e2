"""`reactive up`: the whole system on this machine, with a live view (or plain lines, or JSON lines)."""

from __future__ import annotations

import json
import os
import sys
import time
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cli import common
from reactive import settings
from reactive.up import (
    DEFAULT_MOTO_PORT,
    DEMO_PASSWORD,
    ENV_FILE,
    Snapshot,
    Up,
    UpEvent,
    UpOptions,
)

STATE_STYLE = {"running": "green", "in-process": "green", "backoff": "red", "exited": "red", "stopped": "dim"}
HEALTH_STYLE = {"ok": "green", "failing": "red"}
EVENT_STYLE = {"warning": "yellow", "ready": "bold green", "links": "cyan", "outbox": "magenta"}


class AwsChoice(StrEnum):
    auto = "auto"
    embedded = "embedded"
    external = "external"


def up(
    clients: str = typer.Option(
        None, "--clients", help="Comma-separated client names; default REACTIVE_CLIENTS."
    ),
    var: Path = typer.Option(
        None,
        "--var",
        help="Directory for databases, logs and our Redis (one running system each); default ./var.",
    ),
    master_port: int = typer.Option(8001, "--master-port", min=1, max=65535, help="Port of the master site."),
    client_port: list[int] = typer.Option(
        None,
        "--client-port",
        min=1,
        max=65535,
        help="Port of each client site, in order (default 8000, 8002, ...).",
    ),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address every site (and our Redis and moto) binds to, added to DJANGO_ALLOWED_HOSTS; "
        "0.0.0.0 or :: binds the sites to every address, Redis and moto to 127.0.0.1.",
    ),
    aws: AwsChoice = typer.Option(
        AwsChoice.auto,
        "--aws",
        help="embedded: moto's server in this process; external: AWS_ENDPOINT_URL or real AWS; "
        "auto: external when AWS_ENDPOINT_URL or AWS credentials are set.",
    ),
    moto_port: int = typer.Option(
        DEFAULT_MOTO_PORT,
        "--moto-port",
        min=0,
        max=65535,
        help="Port of the embedded moto (0 or busy: any free one).",
    ),
    demo: bool = typer.Option(True, "--demo/--no-demo", help="Create alice, bob, carol and the admin user."),
    plain: bool = typer.Option(
        False, "--plain", help="Print events as lines (the default when not on a terminal)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print every event as one JSON object a line."),
) -> None:
    """Run the whole system on this machine: local AWS, Redis, the master, every client, their workers.

    Master on :8001 (admin: admin / admin; a random password, shown, when --host lets others in), clients
    on :8000, :8002, ...; logs under var/log/.
    Ctrl-C (or SIGTERM) stops every process and leaves nothing running.

    Example: [bold]reactive up --clients alpha,beta[/bold]
    """
    names = (
        [common.client_name(c.strip(), "--clients") for c in clients.split(",") if c.strip()]
        if clients
        else None
    )
    options = UpOptions(
        clients=tuple(names or settings.clients()),
        var_dir=(var or settings.var_dir()).resolve(),
        master_port=master_port,
        client_ports=tuple(client_port or ()),
        host=host,
        aws=aws.value,
        moto_port=moto_port,
        demo=demo,
    )
    options.ports()  # usage errors (port counts) before anything starts
    live = not (as_json or plain) and common.console.is_terminal
    on_event = print_json_event if as_json else print_event
    system = Up(options, on_event=None if live else on_event)
    system.lock()  # another run on this var directory: one error line, before anything starts or is written
    exit_now(run_live(system) if live else system.run())


def exit_now(code: int) -> None:
    """Every child is stopped and reaped and every file closed: skip the interpreter's teardown, which takes
    seconds after moto, boto3 and Django were loaded, so that a stop is over when it says so."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_live(system: Up) -> int:
    options = system.options

    def view() -> RenderableType:
        try:
            return render(system.snapshot(), options)
        except Exception as exc:  # a rendering bug must never take the supervisor (and its children) down
            return Text(f"(live view failed: {type(exc).__name__}: {exc}; logs under {options.log_dir})")

    with Live(get_renderable=view, console=common.console, refresh_per_second=2) as live:
        code = system.run()
        live.refresh()
    return code


def print_event(event: UpEvent) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
    style = EVENT_STYLE.get(event.kind, "")
    common.console.print(Text(f"{stamp} {event.text}", style=style), soft_wrap=True)
    for label, url in event.data.get("links", {}).items():
        common.console.print(f"  {label}: {url}", soft_wrap=True, highlight=False, markup=False)
    if event.kind == "ready":
        for line in sign_in_hints(event.data.get("admin"), event.data.get("demo_password")):
            common.console.print(f"  {line}", highlight=False)
        common.console.print(
            f"  other terminals: source {event.data.get('env_file')}", highlight=False, markup=False
        )
        common.console.print(
            f"  logs: {event.data.get('log_dir')}; Ctrl-C stops everything", highlight=False, markup=False
        )


def sign_in_hints(admin: dict[str, str] | None, demo_password: str | None) -> list[str]:
    hints = []
    if demo_password:
        hints.append(
            f"master sign-in: alice, bob or carol / {demo_password} (then open a client from the list)"
        )
    if admin:
        hints.append(f"master admin: {admin['username']} / {admin['password']}")
    return hints


def print_json_event(event: UpEvent) -> None:
    sys.stdout.write(
        json.dumps({"event": event.kind, "at": event.at, "text": event.text, **event.data}) + "\n"
    )
    sys.stdout.flush()


# -- the live view: rendering only; Up.snapshot() fetches ---------------------------------------------------
def render(snapshot: Snapshot, options: UpOptions) -> RenderableType:
    parts: list[RenderableType] = [processes_table(snapshot)]
    parts.append(queues_table(snapshot))
    if snapshot.links:
        parts.append(links_panel(snapshot, options))
    parts.append(events_panel(snapshot))
    status = "[bold green]ready[/]" if snapshot.ready else "[yellow]starting[/]"
    env_file = options.var_dir / ENV_FILE
    paths = escape(
        f"  other terminals: source {env_file}   logs: {options.log_dir}/"
    )  # paths are text, not markup
    parts.append(Text.from_markup(f"{status}{paths}"))
    parts.append(Text("Ctrl-C stops everything", style="dim"))
    return Group(*parts)


def processes_table(snapshot: Snapshot) -> Table:
    table = Table(title="processes", title_justify="left")
    for column in ("name", "state", "pid", "port", "restarts", "health"):
        table.add_column(column, justify="right" if column in ("pid", "port", "restarts") else "left")
    for row in snapshot.processes:
        table.add_row(
            row.name,
            Text(row.state, style=STATE_STYLE.get(row.state, "")),
            str(row.pid or "-"),
            str(row.port or "-"),
            Text(str(row.restarts), style="red" if row.restarts else ""),
            Text(row.health or "-", style=HEALTH_STYLE.get(row.health, "")),
        )
    return table


def queues_table(snapshot: Snapshot) -> Table:
    backlog = "?" if snapshot.backlog is None else str(snapshot.backlog)
    if snapshot.backlog and snapshot.backlog_age is not None:
        backlog += f" (oldest {snapshot.backlog_age:.0f} s)"
    table = Table(
        title=f"queues        outbox backlog on the master: {backlog}", title_justify="left", expand=True
    )
    for column in ("client", "queue", "in flight", "dead letters"):
        table.add_column(column, justify="left" if column == "client" else "right")
    for row in snapshot.queues:
        dead = Text(_count(row.dead), style="red" if row.dead else "")
        table.add_row(row.client, _count(row.visible), _count(row.in_flight), dead)
    return table


def links_panel(snapshot: Snapshot, options: UpOptions) -> Panel:
    lines = Text()
    for label, url in snapshot.links.items():
        lines.append(f"{label}: ", style="bold")
        lines.append(url + "\n", style=f"link {url}")
    hints = sign_in_hints(snapshot.admin, DEMO_PASSWORD if options.demo else None)
    if any(" as " in label for label in snapshot.links):
        hints.append("login links are fresh for 60 s (renewed every 45 s), one use each")
    lines.append("\n".join(hints), style="dim")
    return Panel(lines, title="open", title_align="left")


def events_panel(snapshot: Snapshot) -> Panel:
    lines = Text()
    for event in snapshot.events:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
        lines.append(f"{stamp} ", style="dim")
        lines.append(event.text + "\n", style=EVENT_STYLE.get(event.kind, ""))
    return Panel(lines, title="last events", title_align="left")


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def register(app: typer.Typer) -> None:
    app.command()(up)
