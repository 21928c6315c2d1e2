"""The `reactive` command. Commands are thin: they call reactive.* and render with rich."""

from __future__ import annotations

import os
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version

import typer

from cli import common
from reactive.errors import ReactiveError, ServiceUnavailable

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
        from django.db import OperationalError

        if _missing_table(exc):
            return ReactiveError(_not_migrated(exc))
        if isinstance(exc, OperationalError):
            return ServiceUnavailable(f"cannot use the database: {exc}".strip())
    except ImportError:  # pragma: no cover
        pass
    try:
        from django.core.exceptions import ImproperlyConfigured

        if isinstance(exc, ImproperlyConfigured):
            return ReactiveError(f"configuration: {exc}")
    except ImportError:  # pragma: no cover
        pass
    return None


def _missing_table(exc: BaseException) -> bool:
    """A database that answers but was never migrated (SQLite's and PostgreSQL's wording)."""
    from django.db import OperationalError, ProgrammingError

    text = str(exc)
    return isinstance(exc, OperationalError | ProgrammingError) and (
        "no such table" in text or ("relation" in text and "does not exist" in text)
    )


def _not_migrated(exc: BaseException) -> str:
    # Not an outage (exit 3): the database is there and needs its tables, which only a migration brings.
    from django.db import DEFAULT_DB_ALIAS, connections

    name = connections[DEFAULT_DB_ALIAS].settings_dict.get("NAME") or "the database"
    site = os.environ.get("DJANGO_SETTINGS_MODULE", "the site's settings")
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"{name} is not migrated ({first_line}): run `python -m django migrate` with "
        f"DJANGO_SETTINGS_MODULE={site} and the same DATABASE_URL (`reactive up` migrates on start)"
    )


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
        common.err_console.print(f"[red]error:[/red] {error}", markup=True, highlight=False)
        sys.exit(error.exit_code)
