"""`python manage.py listener`: the seed's command, a thin alias of `reactive listen` for this client."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Run this client's listener (alias of `reactive listen --client $REACTIVE_CLIENT`)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="drain what is visible now, then exit")
        parser.add_argument("--batch", type=int, default=10)
        parser.add_argument("--wait", type=float, default=20)

    def handle(self, *args: Any, **options: Any) -> None:
        from reactive.listener import serve

        serve(settings.REACTIVE_CLIENT, once=options["once"], batch=options["batch"], wait=options["wait"])
