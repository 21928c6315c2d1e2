from __future__ import annotations

import asyncio
import math
import signal
from collections.abc import Callable

import typer

from cli import common
from cli.completion import SITE_CLIENT


def beat(
    once: bool = typer.Option(False, "--once", help="Send one tick now and exit."),
    interval: float | None = typer.Option(
        None,
        "--interval",
        "-i",
        min=0.05,
        max=3600,  # and never inf or nan (a range check alone lets nan through): one tick, then silence
        callback=lambda value: _finite(value),
        help="Seconds between ticks (loop); default REACTIVE_CLOCK_INTERVAL, else 0.5.",
    ),
    client: str = SITE_CLIENT,
    as_json: bool = typer.Option(False, "--json", help="Print each tick sent as one JSON object a line."),
) -> None:
    """Send clock ticks to the clock group now: once, or in a loop (an alternative to Celery beat).

    Each tick is stored in Redis (the page's first value) and sent to every browser on /time/tic/.
    The loop waits for Redis when it is out, at start-up as later on (--once fails instead, exit 3).
    It touches REACTIVE_HEARTBEAT_FILE as it goes round (python -m reactive.heartbeat --max-age 30).

    Example: [bold]reactive beat --interval 0.5[/bold]
    """
    common.setup_django("client", client)
    from cli.tail import require_redis
    from reactive import clock, settings

    interval = interval or settings.clock_interval()

    if once:  # one tick, now: Redis out is a failure (exit 3); the loop instead waits for it
        require_redis()
        tick = clock.tick()
        if as_json:
            common.print_json(tick)
        else:
            common.console.print(f"sent {tick['time']} ({tick['iso']}) to the clock group")
        return

    def printed(tick: clock.Tick) -> None:
        if as_json:
            common.print_json(tick)

    common.err_console.print(f"ticking every {interval:g} s; Ctrl-C to stop")
    sent = asyncio.run(_loop(interval, printed))
    common.err_console.print(f"stopped after {sent} ticks")


async def _loop(interval: float, printed: Callable[[dict[str, str]], None]) -> int:
    from reactive import clock
    from reactive.heartbeat import Heartbeat

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # REACTIVE_HEARTBEAT_FILE, touched as the loop goes round: a liveness probe sees a beat that is stuck.
    heartbeat = Heartbeat.configured()
    heartbeat.start()  # written now, and touched while the beat waits for Redis: a wait is not a hang
    if not await clock.wait_for_redis(stop, heartbeat):
        return 0  # stopped before Redis answered: nothing was sent
    return await clock.run(interval, stop, on_tick=printed, heartbeat=heartbeat)


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number of seconds, got {value}")
    return value


def register(app: typer.Typer) -> None:
    app.command()(beat)
