"""Check that container commands resolve to something real, as the image would run them.

Run as ``python -m tests.support.resolve_commands`` with one site's environment (DJANGO_SETTINGS_MODULE,
REACTIVE_CLIENT and the manifest's settings); reads a JSON list of argv lists on stdin and prints a JSON
object {argv as text: problem} for the ones that do not resolve (empty when all do).

- ``reactive SUB ...``: SUB is a command of the Typer app and its options parse;
- ``celery -A MODULE SUB ...``: Celery finds the app the way ``-A`` does, SUB exists and its options parse;
- ``uvicorn MODULE:ATTR ...``: the options parse, the module imports and ATTR is an ASGI callable;
- ``python -m MODULE ...``: the module exists; for ``django``, the management command exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from typing import Any


def check_reactive(args: Sequence[str]) -> None:
    import typer.main

    from cli.main import app

    group = typer.main.get_command(app)
    context = group.make_context("reactive", list(args[:1]))
    command = group.get_command(context, args[0])
    if command is None:
        raise LookupError(f"reactive has no command {args[0]!r}")
    command.make_context(args[0], list(args[1:]), parent=context)


def check_celery(args: Sequence[str]) -> None:
    from celery.app.utils import find_app
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as group

    at = list(args).index("-A")
    module, rest = args[at + 1], [*args[:at], *args[at + 2 :]]
    celery_app = find_app(module)
    command = group.commands.get(rest[0])
    if command is None:
        raise LookupError(f"celery has no command {rest[0]!r}")
    command.make_context(
        rest[0], rest[1:], obj=CLIContext(app=celery_app, no_color=True, workdir=None, quiet=True)
    )


def uvicorn_params(args: Sequence[str]) -> dict[str, Any]:
    """uvicorn's command line as its own parser reads it (option names as uvicorn.Config takes them)."""
    # `uvicorn.main` the attribute is the function uvicorn re-exports; the module holds the click command.
    command = importlib.import_module("uvicorn.main").main
    return dict(command.make_context("uvicorn", list(args)).params)


def check_uvicorn(args: Sequence[str]) -> None:
    params = uvicorn_params(args)
    module, attr = str(params["app"]).split(":")
    application = getattr(importlib.import_module(module), attr)
    if not callable(application):
        raise TypeError(f"{params['app']} is not callable")


def check_python(args: Sequence[str]) -> None:
    if args[0] != "-m":
        raise ValueError("only `python -m MODULE` is expected in a manifest")
    module = args[1]
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(module)
    if module == "django":
        import django
        from django.core.management import get_commands

        django.setup()
        if args[2] not in get_commands():
            raise LookupError(f"django has no management command {args[2]!r}")


CHECKS = {
    "reactive": check_reactive,
    "celery": check_celery,
    "uvicorn": check_uvicorn,
    "python": check_python,
}


def problem(argv: Sequence[str]) -> str | None:
    check = CHECKS.get(argv[0])
    if check is None:
        return f"unknown program {argv[0]!r}"
    try:
        check(argv[1:])
    except SystemExit as exc:  # click reports bad options by exiting
        return f"options do not parse (exit {exc.code})"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def main() -> None:
    commands = json.load(sys.stdin)
    problems = {" ".join(argv): p for argv in commands if (p := problem(argv))}
    sys.stdout.write(json.dumps(problems) + "\n")


if __name__ == "__main__":
    main()
