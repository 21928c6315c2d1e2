"""The clock: a tick payload, its current value in Redis, and the send to the "clock" group.

A tick is ``{"time": "HH:MM:SS", "iso": "<UTC ISO 8601>", "zone": "UTC"}``: ``time`` in the configured
zone (``zone`` its abbreviation, shown beside it) for people, ``iso`` in UTC for programs (the browser's
version check, lag measurements). The latest tick is kept in Redis with a short TTL so that a page
connecting between two ticks is never blank, and a value left behind by a stopped beat disappears instead
of showing a frozen time forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

import redis
import redis.asyncio

from reactive import groups, settings
from reactive.errors import ConfigError, FailureStreak, ServiceUnavailable, retry_delay
from reactive.heartbeat import EVERY_SECONDS, Heartbeat

log = logging.getLogger("reactive.clock")
STATE_TTL_SECONDS = 5
TICKS_IN_FLIGHT = 4  # ticks sent but not yet taken by Redis before the next due one is skipped
# A tick Redis has not taken by then is abandoned, its store and its send both: sent late, after a stall,
# a pile of old ticks would reach pages at once and out of order. A late tick is worse than none.
TICK_TIMEOUT_SECONDS = 2.0
Tick = dict[str, str]


def state_key(client: str | None = None) -> str:
    """The Redis key of the current tick, under the client's prefix (clients may share one Redis)."""
    return f"{settings.prefix()}-{client or settings.current_client()}:clock"


def payload(now: datetime | None = None, zone: str | None = None) -> Tick:
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    local = moment.astimezone(ZoneInfo(zone or settings.time_zone()))
    # The zone's abbreviation ("UTC", "CET"): a time without it reads as the page's own zone.
    return {
        "time": local.strftime("%H:%M:%S"),
        "iso": moment.isoformat(timespec="milliseconds"),
        "zone": local.tzname() or "",
    }


def message(tick: Tick) -> dict[str, str]:
    """The channel-layer message of a tick (its type names the consumer handler)."""
    return {"type": groups.CLOCK_TICK, **tick}


def decode(raw: bytes | str | None) -> Tick | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("time"), str) and isinstance(value.get("iso"), str):
        tick = {"time": value["time"], "iso": value["iso"]}
        if isinstance(value.get("zone"), str):  # stored by a beat of an earlier release: none
            tick["zone"] = value["zone"]
        return tick
    return None


# -- Redis clients: one sync client per process; one async client per event loop (asyncio clients are
# bound to the loop that made them, and tests, async_to_sync and servers each run their own loop).
_sync_client: tuple[str, redis.Redis] | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, redis.asyncio.Redis]] = (
    weakref.WeakKeyDictionary()
)


def _redis() -> redis.Redis:
    global _sync_client
    url = settings.redis_url()
    if _sync_client is None or _sync_client[0] != url:
        _sync_client = (url, redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2))
    return _sync_client[1]


def _aredis() -> redis.asyncio.Redis:
    loop = asyncio.get_running_loop()
    url = settings.redis_url()
    cached = _async_clients.get(loop)
    if cached is None or cached[0] != url:
        cached = (url, redis.asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2))
        _async_clients[loop] = cached
    return cached[1]


def store(tick: Tick) -> None:
    """Keep a tick as the current one (what a page connecting now shows), for STATE_TTL_SECONDS."""
    try:
        _redis().set(state_key(), json.dumps(tick), ex=STATE_TTL_SECONDS)
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"cannot reach Redis at {settings.shown_redis_url()}: {exc}") from exc


def current() -> Tick | None:
    """The latest tick stored by the beat, or None (no beat running, or its value expired)."""
    try:
        return decode(_redis().get(state_key()))
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"cannot reach Redis at {settings.shown_redis_url()}: {exc}") from exc


async def acurrent() -> Tick:
    """The tick a page shows at once on connect: Redis' latest, or now when Redis has none or is down."""
    try:
        stored = decode(await _aredis().get(state_key()))
    except (redis.RedisError, OSError) as exc:
        log.warning("clock state unavailable, showing the local time: %s", exc)
        stored = None
    return stored or payload()


async def atick(layer: Any = None, now: datetime | None = None) -> Tick:
    """One tick: store it and send it to the clock group, both at once (each is a few Redis round trips,
    which a distant Redis makes long), within TICK_TIMEOUT_SECONDS. Should either fail or time out, the
    other is cancelled with it (gather left the send running, to land late); the error is
    ServiceUnavailable."""
    tick = payload(now)
    try:
        async with asyncio.timeout(TICK_TIMEOUT_SECONDS):
            await _store_and_send(tick, layer or groups.layer())
    except TimeoutError as exc:
        raise ServiceUnavailable(
            f"Redis at {settings.shown_redis_url()} did not take the tick within {TICK_TIMEOUT_SECONDS:g} s"
        ) from exc
    return tick


async def _store(tick: Tick) -> None:
    await _aredis().set(state_key(), json.dumps(tick), ex=STATE_TTL_SECONDS)


async def _store_and_send(tick: Tick, layer: Any) -> None:
    try:
        async with asyncio.TaskGroup() as both:
            both.create_task(_store(tick))
            both.create_task(layer.group_send(groups.CLOCK, message(tick)))
    except* (redis.RedisError, OSError) as failed:
        exc = failed.exceptions[0]
        raise ServiceUnavailable(f"cannot reach Redis at {settings.shown_redis_url()}: {exc}") from exc


def tick() -> Tick:
    """One tick from synchronous code (the Celery task, ``reactive beat --once``).

    It runs on the process's sending loop: with async_to_sync each tick would open new Redis connections
    (channels-redis and redis-py keep them per event loop), two a second for as long as the beat runs.
    """
    try:
        return cast(Tick, groups.run_sync(atick()))
    except TimeoutError as exc:
        raise ServiceUnavailable(
            f"Redis at {settings.shown_redis_url()} did not take the tick within {groups.SEND_TIMEOUT_SECONDS:g} s"
        ) from exc


async def wait_for_redis(
    stop: asyncio.Event, heartbeat: Heartbeat, delay: Callable[[int], float] | None = None
) -> bool:
    """Wait until Redis answers, touching ``heartbeat`` all along: True then, False when ``stop`` came
    first. A beat started while Redis is out waits for it with the listener's backoff (1, 2, 4 ... 30 s)
    and says so once, and once more when it answers: exiting made an orchestrator restart it with its own,
    longer backoff (CrashLoopBackOff), for an outage the loop itself rides out."""
    delay = delay or retry_delay
    loop = asyncio.get_running_loop()
    heartbeat.beat()
    failures = 0
    while not stop.is_set():
        problem = await _until_stopped(_ping(), stop)
        if stop.is_set():
            return False
        if problem is None:
            if failures:
                log.info("Redis at %s answers: the beat starts ticking", settings.shown_redis_url())
            return True
        failures += 1
        if failures == 1:
            log.warning(
                "Redis at %s does not answer (%s): the beat waits for it, retrying silently until it does",
                settings.shown_redis_url(),
                problem,
            )
        await _wait_until(loop.time() + delay(failures), stop, heartbeat)
    return False


async def _ping() -> str | None:
    """Why Redis does not answer a PING now, or None when it does."""
    try:
        async with asyncio.timeout(TICK_TIMEOUT_SECONDS):
            await _aredis().ping()
    except TimeoutError:
        return f"no answer within {TICK_TIMEOUT_SECONDS:g} s"
    except (redis.RedisError, OSError) as exc:
        if _refusal(exc):  # Redis answers, and says no: waiting would only hide the mistake
            raise ConfigError(
                f"Redis at {settings.shown_redis_url()} refuses the beat: {type(exc).__name__}: {exc} "
                "(check REDIS_URL)"
            ) from exc
        return f"{type(exc).__name__}: {exc}"
    return None


# Redis's "no" to a wrong password, an ACL without PING, a database number out of range: configuration,
# not an outage. Its passing states (BUSY running a script, MASTERDOWN, TRYAGAIN, CLUSTERDOWN, READONLY,
# LOADING) are waited out like an outage.
PASSING = ("BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "LOADING")


def _refusal(exc: BaseException) -> bool:
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.NoPermissionError):
        return True
    return type(exc) is redis.ResponseError and not str(exc).startswith(PASSING)


async def _until_stopped(work: Coroutine[Any, Any, str | None], stop: asyncio.Event) -> str | None:
    """``work``'s result, or None as soon as ``stop`` is set (``work`` is cancelled): a stop during a
    ping to an unresponsive Redis does not wait for its timeout."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopped):
            pending.cancel()
        await asyncio.gather(task, stopped, return_exceptions=True)
    return None if task.cancelled() else task.result()


async def run(
    interval: float,
    stop: asyncio.Event,
    on_tick: Callable[[Tick], None] | None = None,
    heartbeat: Heartbeat | None = None,
) -> int:
    """Tick every ``interval`` seconds on a fixed schedule (no drift) until ``stop`` is set.

    Each tick goes out as its own task, so a slow Redis (a distant one, a busy one) does not stretch the
    schedule; at most TICKS_IN_FLIGHT wait at once, and a tick due while they all still wait is skipped.
    A tick that fails because Redis is down is logged (once an outage, and once when it ends) and the loop
    goes on: the beat recovers by itself.
    A schedule that fell behind (a long pause) skips the missed ticks instead of sending a burst.
    ``heartbeat`` is touched as the loop goes round, ticks sent or not (a Redis outage is not a stuck beat),
    and during the wait for the next tick however long the interval.
    """
    loop = asyncio.get_running_loop()
    layer = groups.layer()
    heartbeat = heartbeat or Heartbeat(None)
    heartbeat.start()
    sent = 0
    in_flight: set[asyncio.Task[Tick]] = set()
    failures = FailureStreak("clock ticks", log)  # an outage is one warning, and one line when it ends

    def finished(task: asyncio.Task[Tick]) -> None:
        nonlocal sent
        in_flight.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            failures.failed(error)
        else:
            failures.succeeded()
            sent += 1
            if on_tick is not None:
                on_tick(task.result())

    due = loop.time()
    skipping = False
    while not stop.is_set():
        heartbeat.beat()
        if len(in_flight) < TICKS_IN_FLIGHT:
            task = loop.create_task(atick(layer))
            in_flight.add(task)
            task.add_done_callback(finished)
            skipping = False
        elif not skipping:  # once per streak: a stalled Redis holds ticks for up to its socket timeout
            skipping = True
            log.warning("tick skipped: Redis has not taken the last %d yet (until it does)", TICKS_IN_FLIGHT)
        due += interval
        if due < loop.time():
            due = loop.time() + interval
        await _wait_until(due, stop, heartbeat)
    if in_flight:  # the ticks already sent finish (or time out) before the loop reports its count
        await asyncio.wait(set(in_flight), timeout=groups.SEND_TIMEOUT_SECONDS)
    return sent


async def _wait_until(due: float, stop: asyncio.Event, heartbeat: Heartbeat) -> None:
    """Sleep until the loop time ``due`` (or ``stop``), beating at least every EVERY_SECONDS on the way:
    `reactive beat --interval 3600` waits an hour between ticks without looking stuck."""
    loop = asyncio.get_running_loop()
    while True:  # awaits at least once, even when the tick is due already: the sent ticks must get to run
        left = max(0.0, due - loop.time())
        with contextlib.suppress(TimeoutError):  # the normal case: the next tick (or beat) is due
            async with asyncio.timeout(min(left, EVERY_SECONDS)):  # not wait_for: see reactive/layers.py
                await stop.wait()
        heartbeat.beat()
        if stop.is_set() or loop.time() >= due:
            return
