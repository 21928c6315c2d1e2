"""The `reactive` command. Commands are thin: they call reactive.* and render with rich."""

from __future__ import annotations

import os
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version

import typer
from rich.markup import escape

from cli import common
from reactive.errors import ReactiveError, ServiceUnavailable, is_missing_schema

app = typer.Typer(
    name="reactive",
    help="Operate reactive: keep users in sync across Django sites in real time.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"reactive {version('reactive')}")
        except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
            typer.echo("reactive (not installed)")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    if debug:
        common.state["debug"] = True


def _register() -> None:
    from cli import beat, listen, login_link, provision, tail, up

    for module in (provision, listen, up, tail, beat, login_link):
        module.register(app)
    from cli import dlq, replay, status, sync, verify

    for ops in (dlq, replay, status, sync, verify):
        ops.register(app)


_register()


def translate(exc: BaseException) -> ReactiveError | None:
    """Errors from the services that escaped translation at the boundary."""
    if isinstance(exc, ReactiveError):
        return exc
    try:
        import redis

        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            return ServiceUnavailable(f"cannot reach Redis: {exc}")
    except ImportError:  # pragma: no cover
        pass
    try:
        from django.db import DatabaseError, OperationalError

        if is_missing_schema(exc):
            return ReactiveError(_not_migrated(exc))
        if isinstance(exc, OperationalError):
            return ServiceUnavailable(f"cannot use the database: {exc}".strip())
        if isinstance(exc, DatabaseError):
            return ReactiveError(f"the database refused: {exc}".strip())
    except ImportError:  # pragma: no cover
        pass
    try:
        from django.core.exceptions import ImproperlyConfigured

        if isinstance(exc, ImproperlyConfigured):
            return ReactiveError(f"configuration: {exc}")
    except ImportError:  # pragma: no cover
        pass
    return None


def _not_migrated(exc: BaseException) -> str:
    # Not an outage (exit 3): the database answered, and it needs the tables a migration brings.
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    site = os.environ.get("DJANGO_SETTINGS_MODULE", "<site>.settings")
    client = os.environ.get("REACTIVE_CLIENT") if site.startswith("client_site") else None
    how = f"DJANGO_SETTINGS_MODULE={site}" + (f" REACTIVE_CLIENT={client}" if client else "")
    return (
        f"{_database_name()} is not migrated ({first_line}): run `{how} python -m django migrate` "
        "with the rest of this command's environment (`reactive up` migrates on start)"
    )


def _database_name() -> str:
    try:
        from django.db import DEFAULT_DB_ALIAS, connections

        database = connections[DEFAULT_DB_ALIAS].settings_dict
    except Exception:  # settings not configured: the error came from elsewhere
        return "the database"
    name, host = database.get("NAME"), database.get("HOST")
    if not name:
        return "the database"
    return f"database {name} on {host}" if host else str(name)


def run() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        error = translate(exc)
        if error is None or common.state["debug"]:
            traceback.print_exc()
        if error is None:
            sys.exit(1)
        line = " ".join(str(error).split())  # one line: drivers' messages carry their own newlines and tabs
        common.err_console.print(f"[red]error:[/red] {escape(line)}", markup=True, highlight=False)
        sys.exit(error.exit_code)
