"""`python manage.py listener`: the seed's command, a thin alias of `reactive listen` for this client."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Run this client's listener (alias of `reactive listen --client $REACTIVE_CLIENT`)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="drain what is visible now, then exit")
        parser.add_argument("--batch", type=int, default=10)
        parser.add_argument("--wait", type=float, default=20)

    def handle(self, *args: Any, **options: Any) -> None:
        from cli.main import translate
        from reactive.listener import serve

        try:
            serve(
                settings.REACTIVE_CLIENT, once=options["once"], batch=options["batch"], wait=options["wait"]
            )
        except Exception as exc:  # as `reactive listen` does: one line and its exit code, not a traceback
            error = translate(exc)
            if error is None:
                raise
            raise CommandError(str(error), returncode=error.exit_code) from exc
