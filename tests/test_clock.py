"""The clock: payload, Redis state with a TTL, the group send, the beat loop, the Celery schedule."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async

from reactive import clock
from reactive.errors import ServiceUnavailable
from tests.support.heartbeats import aged, fresh
from tests.support.realtime import run
from tests.support.services import eventually, free_port, missing

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


@pytest.fixture
def redis_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")


def stored(redis_url: str, prefix: str) -> tuple[dict[str, str], int]:
    client = redis.Redis.from_url(redis_url)
    key = f"{prefix}-alpha:clock"
    return json.loads(client.get(key) or "null"), int(client.ttl(key))


def test_payload_has_local_time_its_zone_and_utc_iso() -> None:
    utc = clock.payload(MOMENT, "UTC")
    assert utc == {"time": "03:04:05", "iso": "2026-01-02T03:04:05.678+00:00", "zone": "UTC"}
    paris = clock.payload(MOMENT, "Europe/Paris")
    assert paris == {"time": "04:04:05", "iso": "2026-01-02T03:04:05.678+00:00", "zone": "CET"}


def test_a_stored_tick_of_an_earlier_release_without_a_zone_still_reads() -> None:
    assert clock.decode('{"time": "03:04:05", "iso": "2026-01-02T03:04:05.678+00:00"}') == {
        "time": "03:04:05",
        "iso": "2026-01-02T03:04:05.678+00:00",
    }
    assert clock.decode(json.dumps(clock.payload(MOMENT, "UTC")))["zone"] == "UTC"  # type: ignore[index]


def test_payload_zone_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIME_ZONE", "Asia/Tokyo")
    assert clock.payload(MOMENT)["time"] == "12:04:05"


def test_tick_stores_the_time_with_a_ttl_and_sends_it_to_the_clock_group(
    redis_layer: str, redis_url: str, prefix: str
) -> None:
    from channels.layers import get_channel_layer

    async def scenario() -> tuple[dict[str, str], dict[str, Any]]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("clock", channel)
        tick = await sync_to_async(clock.tick)()
        message = await asyncio.wait_for(layer.receive(channel), 5)
        await layer.group_discard("clock", channel)
        return tick, message

    tick, message = run(scenario)
    assert message == {"type": "clock.tick", **tick}
    value, ttl = stored(redis_url, prefix)
    assert value == tick
    assert 0 < ttl <= clock.STATE_TTL_SECONDS
    assert clock.current() == tick


def test_current_is_none_without_a_beat(redis_layer: str) -> None:
    assert clock.current() is None


def test_page_value_falls_back_to_now_without_a_stored_tick(redis_layer: str) -> None:
    tick = run(clock.acurrent)
    assert abs(datetime.fromisoformat(tick["iso"]) - datetime.now(UTC)).total_seconds() < 5


def test_page_value_falls_back_to_now_when_redis_is_down(redis_down: None) -> None:
    tick = run(clock.acurrent)
    assert abs(datetime.fromisoformat(tick["iso"]) - datetime.now(UTC)).total_seconds() < 5


def test_tick_without_redis_is_service_unavailable(redis_down: None) -> None:
    with pytest.raises(ServiceUnavailable, match="cannot reach Redis"):
        clock.tick()
    with pytest.raises(ServiceUnavailable):
        clock.current()


def test_beat_loop_ticks_on_schedule_until_stopped(redis_layer: str) -> None:
    ticks: list[dict[str, str]] = []

    async def scenario() -> int:
        stop = asyncio.Event()

        def seen(tick: dict[str, str]) -> None:
            ticks.append(tick)
            if len(ticks) == 4:
                stop.set()

        return await asyncio.wait_for(clock.run(0.05, stop, on_tick=seen), 10)

    assert run(scenario) == 4
    times = [datetime.fromisoformat(t["iso"]) for t in ticks]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert all(0.02 < gap < 0.5 for gap in gaps), gaps


def test_beat_loop_survives_redis_being_down(redis_down: None, settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

    async def scenario() -> int:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        return await clock.run(0.05, stop)

    assert run(scenario) == 0  # every tick failed, was logged, and the loop went on until stopped


def fresh_client_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """client_site.settings imported anew for alpha under tmp_path; sys.modules as it was afterwards."""
    monkeypatch.setenv("REACTIVE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("REACTIVE_CLIENT", "alpha")
    # setitem records what is there now (the module or nothing) and puts it back after the test.
    monkeypatch.setitem(sys.modules, "client_site.settings", sys.modules.get("client_site.settings"))
    del sys.modules["client_site.settings"]
    return importlib.import_module("client_site.settings")


def test_celery_beat_runs_the_tick_twice_a_second_and_drops_late_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("REACTIVE_CLOCK_INTERVAL", raising=False)
    client_settings = fresh_client_settings(monkeypatch, tmp_path)
    entry = client_settings.CELERY_BEAT_SCHEDULE["clock-tick"]
    assert entry["task"] == "reactive.clock_tick"
    assert entry["schedule"] == 0.5
    # expires: a tick queued while workers were down is dropped, not replayed late
    assert 0 < entry["options"]["expires"] <= 2 * entry["schedule"]


def test_celery_task_ticks_and_touches_the_heartbeat(
    redis_layer: str, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Compose's clock is a Celery worker with beat embedded: its probe reads the file each tick touches."""
    from reactive import tasks

    path = tmp_path / "clock.alive"
    monkeypatch.setenv("REACTIVE_HEARTBEAT_FILE", str(path))
    tasks._clock_heartbeat.cache_clear()
    try:
        assert tasks.clock_tick.name == "reactive.clock_tick"
        result = tasks.clock_tick.apply().get()
        value, _ = stored(redis_url, prefix)
        assert value["time"] == result
        assert fresh(path)
        aged(path, 600)
        tasks._clock_heartbeat().every = 0  # it touches at most once a second: here at every tick
        tasks.clock_tick.apply().get()
        assert fresh(path)
    finally:
        tasks._clock_heartbeat.cache_clear()


def test_reactive_beat_and_celery_beat_share_one_interval_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_layer: str
) -> None:
    from typer.testing import CliRunner

    import cli.beat
    from cli.main import app

    monkeypatch.setenv("REACTIVE_CLOCK_INTERVAL", "0.2")
    assert fresh_client_settings(monkeypatch, tmp_path).CELERY_BEAT_SCHEDULE["clock-tick"]["schedule"] == 0.2

    asked: list[float] = []

    async def loop(interval: float, printed: Any) -> int:
        asked.append(interval)
        return 0

    monkeypatch.setattr(cli.beat, "_loop", loop)
    assert CliRunner().invoke(app, ["beat"]).exit_code == 0
    assert CliRunner().invoke(app, ["beat", "--interval", "1.5"]).exit_code == 0
    assert asked == [0.2, 1.5]  # the flag wins over the variable


@pytest.mark.parametrize(("value", "schedule"), [("0", 1.0), ("-5", 1.0), ("2.5", 2.5)])
def test_the_masters_sweep_schedule_is_never_back_to_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, schedule: float
) -> None:
    """Celery beat sends a schedule of 0 or less back to back: the master's beat flooded Redis with sweeps."""
    monkeypatch.setenv("REACTIVE_SWEEP_INTERVAL", value)
    monkeypatch.setenv("REACTIVE_VAR_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "master_site.settings", sys.modules.get("master_site.settings"))
    sys.modules.pop("master_site.settings", None)
    master = importlib.import_module("master_site.settings")
    assert master.CELERY_BEAT_SCHEDULE["sweep-outbox"]["schedule"] == schedule


@pytest.mark.parametrize("value", ["0.01", "soon", "nan"])
def test_a_clock_interval_that_is_no_clock_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from reactive import settings
    from reactive.errors import ConfigError

    monkeypatch.setenv("REACTIVE_CLOCK_INTERVAL", value)
    with pytest.raises(ConfigError, match="REACTIVE_CLOCK_INTERVAL must be"):
        settings.clock_interval()


@pytest.mark.parametrize("value", ["0", "-1", "0.01"])
def test_the_client_beat_never_ticks_faster_than_the_minimum(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    """A clock interval of 0 made Celery beat queue thousands of ticks a second."""
    from reactive.settings import MIN_CLOCK_INTERVAL

    monkeypatch.setenv("REACTIVE_CLOCK_INTERVAL", value)
    schedule = fresh_client_settings(monkeypatch, tmp_path).CELERY_BEAT_SCHEDULE["clock-tick"]["schedule"]
    assert schedule == MIN_CLOCK_INTERVAL


def test_ticks_from_sync_code_keep_their_redis_connections(
    redis_layer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Celery task ticks twice a second: a new event loop per tick (async_to_sync) would connect anew."""
    import redis.asyncio.connection

    clock.tick()  # the first tick connects
    connects: list[object] = []
    real_connect = redis.asyncio.connection.AbstractConnection.connect

    async def counted(self: object) -> None:
        if not getattr(self, "_reader", None):  # a connection being opened, not one already open
            connects.append(self)
        await real_connect(self)  # type: ignore[arg-type]

    monkeypatch.setattr(redis.asyncio.connection.AbstractConnection, "connect", counted)
    for _ in range(20):
        clock.tick()
    assert len(connects) == 0  # async_to_sync opened two a tick: 40


def test_a_slow_redis_does_not_stretch_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ticks Redis takes long to answer (a distant one) must not make the beat wait for them: each tick here
    is answered only once the next two have started, which a beat waiting for each tick never does."""
    from tests.support.realtime import until

    started: list[float] = []
    stop = asyncio.Event()

    async def slow_tick(layer: Any = None) -> dict[str, str]:
        mine = len(started)
        started.append(asyncio.get_running_loop().time())
        if len(started) == 8:
            stop.set()
        await until(
            lambda: len(started) >= mine + 3 or stop.is_set(), what="two more ticks started meanwhile"
        )
        return clock.payload()

    monkeypatch.setattr(clock, "atick", slow_tick)
    monkeypatch.setattr(clock.groups, "layer", lambda: None)

    async def scenario() -> int:
        return await clock.run(0.05, stop)

    sent = run(scenario)
    assert sent == len(started) == 8  # every tick started was answered, none waited for by the next


def test_ticks_redis_never_takes_are_skipped_not_piled_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    started: list[int] = []

    async def hanging_tick(layer: Any = None) -> dict[str, str]:
        started.append(1)
        await asyncio.Event().wait()
        raise AssertionError("never")

    monkeypatch.setattr(clock, "atick", hanging_tick)
    monkeypatch.setattr(clock.groups, "layer", lambda: None)
    monkeypatch.setattr(clock.groups, "SEND_TIMEOUT_SECONDS", 0.1)

    async def scenario() -> int:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        return await clock.run(0.05, stop)

    assert run(scenario) == 0
    assert len(started) == clock.TICKS_IN_FLIGHT
    assert caplog.text.count("tick skipped: Redis has not taken the last 4 yet") == 1  # once per streak


# -- liveness: the beat's heartbeat file ------------------------------------------------------------------
def test_the_beat_touches_its_heartbeat_while_redis_is_down(
    redis_down: None, settings: Any, tmp_path: Path
) -> None:
    """Every tick fails (Redis is out), yet the loop goes round, so the probe must not restart it."""
    from reactive.heartbeat import Heartbeat
    from tests.support.realtime import until

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    path = tmp_path / "beat.alive"

    async def scenario() -> int:
        stop = asyncio.Event()
        beat = asyncio.ensure_future(clock.run(0.05, stop, heartbeat=Heartbeat(path)))
        await until(lambda: fresh(path), what="the first heartbeat")
        for _ in range(2):
            aged(path, 600)
            await until(lambda: fresh(path), timeout=3, what="a heartbeat within a second or two")
        stop.set()
        return await beat

    assert run(scenario) == 0  # no tick sent, and the file fresh all along


def test_a_slow_clock_still_beats_between_its_ticks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`reactive beat --interval 3600` waits an hour between ticks: the wait itself keeps the file fresh."""
    from reactive.heartbeat import Heartbeat
    from tests.support.realtime import until

    ticks: list[float] = []

    async def counted_tick(layer: Any = None) -> dict[str, str]:
        ticks.append(time.monotonic())
        return clock.payload()

    monkeypatch.setattr(clock, "atick", counted_tick)
    monkeypatch.setattr(clock.groups, "layer", lambda: None)
    path = tmp_path / "beat.alive"

    async def scenario() -> int:
        stop = asyncio.Event()
        beat = asyncio.ensure_future(clock.run(3600, stop, heartbeat=Heartbeat(path)))
        await until(lambda: ticks and fresh(path), what="the first tick and heartbeat")
        aged(path, 600)
        await until(lambda: fresh(path), timeout=3, what="a heartbeat during the wait for the next tick")
        stop.set()
        return await beat

    assert run(scenario) == 1 and len(ticks) == 1


# -- a stalled or failing Redis: no late ticks, one line per outage ------------------------------------------
class HangingLayer:
    """A channel layer whose group_send waits until cancelled, as one on a stalled Redis does."""

    def __init__(self) -> None:
        self.cancelled = 0

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def test_a_tick_whose_store_fails_takes_its_send_down_with_it(redis_down: None) -> None:
    """gather() raised on the failed store and left the send running: after a stall, the sends that piled
    up reached pages all at once, out of order, and their clocks jumped back."""
    layer = HangingLayer()

    async def scenario() -> int:
        with pytest.raises(ServiceUnavailable, match="cannot reach Redis"):
            await clock.atick(layer)
        return layer.cancelled  # now, not once the loop closes (which cancels whatever is left)

    assert run(scenario) == 1


def test_a_tick_redis_does_not_take_in_time_is_abandoned_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = HangingLayer()
    monkeypatch.setattr(clock, "TICK_TIMEOUT_SECONDS", 0.1)

    async def never_stored(tick: Any) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(clock, "_store", never_stored)

    async def scenario() -> None:
        with pytest.raises(ServiceUnavailable, match="did not take the tick within 0.1 s"):
            async with asyncio.timeout(5):  # a tick that waited for ever would fail here, not hang
                await clock.atick(layer)

    run(scenario)
    assert layer.cancelled == 1


def test_an_outage_of_the_beat_is_one_warning_and_its_end_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two warnings a second for as long as Redis was out (7,200 an hour), and nothing when it came back."""
    import logging

    outcomes = iter([False] * 6 + [True] * 3 + [False] + [True] * 100)

    async def tick(layer: Any = None) -> dict[str, str]:
        if not next(outcomes):
            raise ServiceUnavailable("cannot reach Redis at redis://127.0.0.1:1/0: Connection refused")
        return clock.payload()

    monkeypatch.setattr(clock, "atick", tick)
    monkeypatch.setattr(clock.groups, "layer", lambda: None)

    async def scenario() -> int:
        stop = asyncio.Event()
        sent = 0

        def counted(tick: Any) -> None:
            nonlocal sent
            sent += 1
            if sent == 6:
                stop.set()

        return await clock.run(0.01, stop, on_tick=counted)

    with caplog.at_level(logging.INFO, logger="reactive.clock"):
        run(scenario)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "reactive.clock"]
    failed = (
        "WARNING",
        "clock ticks failed: ServiceUnavailable: cannot reach Redis at redis://127.0.0.1:1/0: Connection "
        "refused; retrying, silently until it works",
    )
    assert lines == [failed, ("INFO", "clock ticks works again"), failed, ("INFO", "clock ticks works again")]


# -- a beat started while Redis is out waits for it (it exited 3: CrashLoopBackOff under Kubernetes) -------
def test_the_beat_waits_for_redis_at_start_up_saying_so_once_and_beating_meanwhile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from reactive.heartbeat import Heartbeat

    answers = iter(["ConnectionError: refused"] * 4 + [None])
    pinged: list[float] = []

    async def ping() -> str | None:
        pinged.append(time.monotonic())
        return next(answers)

    monkeypatch.setattr(clock, "_ping", ping)
    path = tmp_path / "beat.alive"
    heartbeat = Heartbeat(path, every=0)
    delays: list[int] = []

    def delay(failures: int) -> float:
        delays.append(failures)
        return 0.01

    async def scenario() -> bool:
        return await clock.wait_for_redis(asyncio.Event(), heartbeat, delay)

    with caplog.at_level(logging.INFO, logger="reactive.clock"):
        assert run(scenario) is True
    assert len(pinged) == 5 and delays == [1, 2, 3, 4]  # the backoff grows with the failures
    assert fresh(path), "the heartbeat file was not made while the beat waited"
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "reactive.clock"]
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert "does not answer (ConnectionError: refused): the beat waits for it" in lines[0][1]
    assert "answers: the beat starts ticking" in lines[1][1]


def test_the_wait_for_redis_uses_the_listeners_capped_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from reactive.errors import retry_delay
    from reactive.heartbeat import Heartbeat

    waited: list[float] = []
    answers = iter(["down", "down", None])

    async def ping() -> str | None:
        return next(answers)

    async def wait_until(due: float, stop: asyncio.Event, heartbeat: Heartbeat) -> None:
        waited.append(round(due - asyncio.get_running_loop().time(), 1))

    monkeypatch.setattr(clock, "_ping", ping)
    monkeypatch.setattr(clock, "_wait_until", wait_until)

    async def scenario() -> bool:
        return await clock.wait_for_redis(asyncio.Event(), Heartbeat(None))

    assert run(scenario) is True
    assert waited == [retry_delay(1), retry_delay(2)] and retry_delay(100) == 30.0


@pytest.mark.parametrize("hangs", [False, True], ids=["in-the-backoff", "in-a-ping"])
def test_a_stop_during_the_wait_for_redis_ends_it_at_once(
    monkeypatch: pytest.MonkeyPatch, hangs: bool
) -> None:
    """Ctrl-C / SIGTERM during the backoff, or while a PING waits on a Redis that does not answer."""
    from reactive.heartbeat import Heartbeat

    async def ping() -> str | None:
        if hangs:
            await asyncio.Event().wait()  # a Redis that never answers
        return "ConnectionError: refused"

    monkeypatch.setattr(clock, "_ping", ping)

    async def scenario() -> tuple[bool, float]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, stop.set)
        started = time.monotonic()
        waited = await clock.wait_for_redis(stop, Heartbeat(None), lambda failures: 3600.0)
        return waited, time.monotonic() - started

    waited, seconds = run(scenario)
    assert waited is False
    assert seconds < 5, f"the stop took {seconds:.1f} s"


def start_beat(tmp_path: Path, redis_port: int, prefix: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    from tests.test_cli_manners import REACTIVE

    alive, output = tmp_path / "beat.alive", tmp_path / "beat.log"
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "REACTIVE_HEARTBEAT_FILE": str(alive),
        "REACTIVE_PREFIX": prefix,
        "REACTIVE_VAR_DIR": str(tmp_path / "var"),
        "COLUMNS": "200",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    with output.open("wb") as log:
        argv = [REACTIVE, "beat", "--client", "alpha", "--interval", "0.2"]
        beat = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    return beat, alive, output


def waiting(beat: subprocess.Popen[bytes], output: Path) -> bool:
    """The beat said it waits for Redis, and still runs (an exit fails the test now, not at the deadline)."""
    if beat.poll() is not None:
        pytest.fail(f"reactive beat exited {beat.returncode}:\n{output.read_text()}", pytrace=False)
    return "the beat waits for it" in output.read_text()


def stop_beat(beat: subprocess.Popen[bytes]) -> int:
    if beat.poll() is None:
        beat.send_signal(signal.SIGTERM)
    try:
        return beat.wait(15)
    except subprocess.TimeoutExpired:
        beat.kill()
        beat.wait()
        raise


def stored_tick(url: str, key: str) -> bytes | None:
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=0.5).get(key)  # type: ignore[no-any-return]
    except redis.RedisError:  # not started yet
        return None


def test_reactive_beat_started_before_redis_waits_for_it_then_ticks(tmp_path: Path, prefix: str) -> None:
    """Across processes: `reactive beat` with nothing at REDIS_URL keeps running (it exited 3), its heartbeat
    file fresh; once a Redis starts there, ticks reach it; SIGTERM then ends it with 0."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("Redis", "no redis-server on the PATH")
        return
    port = free_port()
    beat, alive, output = start_beat(tmp_path, port, prefix)
    server: subprocess.Popen[bytes] | None = None
    try:
        eventually(lambda: waiting(beat, output), timeout=60, what="the wait's warning")
        eventually(lambda: fresh(alive), timeout=10, what="a heartbeat file touched during the wait")
        aged(alive, 60)
        eventually(lambda: fresh(alive), timeout=10, what="the heartbeat touched again while Redis is out")
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        key = f"{prefix}-alpha:clock"
        # The backoff is at most 30 s (1, 2, 4 ... by the time Redis is up here, a few seconds).
        eventually(lambda: stored_tick(url, key), timeout=60, what="a tick stored in Redis")
        assert "the beat starts ticking" in output.read_text()
        assert stop_beat(beat) == 0, output.read_text()
    finally:
        stop_beat(beat)
        if server is not None:
            server.terminate()
            server.wait(10)
    text = output.read_text()
    assert "Traceback" not in text
    assert text.count("the beat waits for it") == 1, text  # one warning for the whole wait


def test_reactive_beat_stopped_while_it_waits_for_redis_exits_0(tmp_path: Path, prefix: str) -> None:
    beat, _, output = start_beat(tmp_path, free_port(), prefix)
    try:
        eventually(lambda: waiting(beat, output), timeout=60, what="the wait's warning")
    finally:
        code = stop_beat(beat)
    assert code == 0, output.read_text()
    assert "Traceback" not in output.read_text()


def test_a_redis_that_refuses_the_beat_is_a_configuration_error_not_an_outage_to_wait_out(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A database number out of range (or a wrong password, an ACL): Redis answers, and says no. Waiting
    with a fresh heartbeat would hide the mistake behind a healthy-looking pod that never ticks."""
    from reactive.errors import ConfigError
    from reactive.heartbeat import Heartbeat

    monkeypatch.setenv("REDIS_URL", redis_url.rsplit("/", 1)[0] + "/9999")

    async def scenario() -> bool:
        return await clock.wait_for_redis(asyncio.Event(), Heartbeat(tmp_path / "beat.alive"), lambda n: 0.01)

    with pytest.raises(ConfigError, match="refuses the beat: ResponseError"):
        run(scenario)


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (redis.AuthenticationError("invalid username-password pair"), True),
        (redis.exceptions.NoPermissionError("this user has no permissions to run the 'ping' command"), True),
        (redis.ResponseError("DB index is out of range"), True),
        (redis.ResponseError("BUSY Redis is busy running a script"), False),
        (redis.exceptions.MasterDownError("Link with MASTER is down"), False),
        (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), False),
        (redis.ConnectionError("Connection refused"), False),
    ],
    ids=["password", "acl", "database", "busy", "masterdown", "loading", "refused"],
)
def test_only_a_redis_that_says_no_for_good_stops_the_beat(error: Exception, refused: bool) -> None:
    assert clock._refusal(error) is refused
