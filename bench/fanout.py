"""Clock fan-out: N authenticated websockets on ONE uvicorn worker, per channel layer.

Per layer (RedisChannelLayer is the baseline; RedisPubSubChannelLayer is given as a ratio to it) one
uvicorn process serves client_site; two client processes open websockets to /time/tic/ with a session
cookie in steps (200, 1,000, 5,000) while `reactive beat --interval 0.5` ticks. Per step, after the
connections settle: the delivery lag of every tick to every socket during a measuring window (receive
time in the client minus the tick's "iso", stamped by the beat just before its Redis SET and group_send),
p50/p99, the share of deliveries that arrived, the server's resident memory per socket ((RSS at N - RSS
with one socket) / N) and the CPU the server and the clients used. The server runs as the client site
is served (reactive.up.WS_OPTIONS: permessage-deflate off), on a core of its own (see Cores); last
variants run the baseline layer with deflate on (uvicorn's default), which browsers then negotiate,
and with the server sharing the clients' cores.

Bounded: BENCH_BUDGET seconds (default 300) in all, shared by the two layers; the last variants run
only in what is left. A step not reached in time is reported so.
Run: .venv/bin/python bench/fanout.py [--sizes 200,1000,5000] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from common import ROOT, cpu_seconds, free_port, machine, markdown_table, percentile, write_section

from reactive.up import WS_OPTIONS

VENV_BIN = Path(sys.executable).parent
LAYER_NAMES = {"redis": "RedisChannelLayer", "pubsub": "RedisPubSubChannelLayer"}
CLIENT_PROCESSES = 2
HANDSHAKES_IN_FLIGHT = 64
WINDOW_SECONDS = 6.0
TICK_SECONDS = 0.5
GRACE_SECONDS = 2.0  # the last part of the window only collects late deliveries
# Before measuring a step: steady state, not the ramp-up (handshakes, session lookups, the garbage
# collections that thousands of new objects trigger).
SETTLE_SECONDS = 2.0
SETTLE_SECONDS_PER_1000 = 1.5
# Runs of one layer at 5,000 sockets gave p99s from 133 to 226 ms on the 2-core machine (2026-11-27):
# layers closer than this are not told apart by one run.
SAME_WITHIN = 1.5
CPU_GAP_WORTH_NAMING = 1.1  # a layer gap beyond SAME_WITHIN is put down to load when the CPU moved with it
CONNECTS_PER_SECOND = 120  # what this machine manages (session + user lookups per handshake), for the budget


def load_note() -> str:
    """The machine is shared: say how busy it was, so that figures are read with that in mind."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) when the run ended"


@dataclass(frozen=True)
class Variant:
    layer: str
    deflate: bool = False  # as the client site is served (reactive.up.WS_OPTIONS)
    shared_cores: bool = False  # the server may run on the clients' core too (see Cores)

    @property
    def label(self) -> str:
        return (
            LAYER_NAMES[self.layer]
            + (", deflate on" if self.deflate else "")
            + (", cores shared with the clients" if self.shared_cores else "")
        )

    def uvicorn_args(self) -> list[str]:
        """The site's options (reactive.up.WS_OPTIONS); the deflate variant differs in that one only."""
        deflate = "--ws-per-message-deflate"
        options = dict(zip(WS_OPTIONS[::2], WS_OPTIONS[1::2], strict=True))
        options[deflate] = "true" if self.deflate else options[deflate]
        return [word for pair in options.items() for word in pair]


@dataclass
class Step:
    size: int
    reached: int = 0
    lags: list[float] = field(default_factory=list)  # tick -> kernel receive at the client socket
    read_lags: list[float] = field(default_factory=list)  # tick -> the client process reading it
    expected: int = 0
    rss_kib: int = 0
    connect_seconds: float = 0.0
    server_cpu: float = 0.0  # share of one core, while measuring
    clients_cpu: float = 0.0

    @property
    def delivered(self) -> float:
        return len(self.lags) / self.expected if self.expected else 0.0

    @property
    def kib_per_socket(self) -> float:
        return self.rss_kib / max(1, self.reached)


class Cores:
    """The server gets a core of its own; the bench's processes (clients, beat, this one) get the others.

    In production the browsers are on other machines. Here the clients read 5,000 frames a tick on the
    same machine, and a client that the scheduler runs on the server's core in the middle of a pass delays
    every socket after it: the server's lag would measure the load generator too. Redis (not started by the
    bench) runs where the scheduler puts it. With a single core nothing is pinned.
    """

    def __init__(self) -> None:
        usable = sorted(os.sched_getaffinity(0))
        self.split = len(usable) >= 2
        self.server = {usable[0]} if self.split else set(usable)
        self.others = set(usable[1:]) if self.split else set(usable)

    def keep_bench_off_the_server(self) -> None:
        if self.split:
            os.sched_setaffinity(0, self.others)

    def pin(self, variant: Variant, *, server: bool) -> Callable[[], None] | None:
        """A preexec_fn that sets a child's cores before it starts (and so for all its threads), or None.

        (preexec_fn is unsafe only in a process with threads; the bench's main process starts none.)
        """
        if not self.split:
            return None
        own = self.server if server else self.others
        cores = (self.server | self.others) if variant.shared_cores else own
        return lambda: os.sched_setaffinity(0, cores)

    def describe(self) -> str:
        if not self.split:
            return "one core: the server, the clients, Redis and the beat share it"
        return (
            f"the server pinned to core {min(self.server)}, the clients and the beat to the other "
            f"core{'s' if len(self.others) > 1 else ''} (browsers are elsewhere in production; Redis runs "
            "where the scheduler puts it), except in the row that says the cores are shared"
        )


CORES = Cores()


# -- the client side: a process holding its share of the sockets ------------------------------------------


SO_TIMESTAMPNS = 35  # Linux: the kernel stamps each received packet (CLOCK_REALTIME, like time.time())
TIMESPEC = struct.Struct("qq")


class Arrivals:
    """The frames the sockets of one client process received while a measuring window was open: when the
    kernel received each, when the client read it, and the frame."""

    def __init__(self) -> None:
        self.open = False
        self.frames: list[tuple[float, float, bytes | bytearray]] = []


class TickReader:
    """One client socket, kept cheap: websockets' sans-I/O protocol does the handshake, the framing and the
    pongs (uvicorn pings every 20 s) over a plain non-blocking socket, and each frame is noted with two
    times. Delivery is the kernel's receive stamp (SO_TIMESTAMPNS): the moment the frame reached this
    socket, whatever the client process was doing. The time the client read it is kept too: on a shared
    machine the clients' own CPU delays their reads, and that delay is theirs, not the server's."""

    def __init__(self, url: str, headers: dict[str, str], deflate: bool, arrivals: Arrivals) -> None:
        from websockets.client import ClientProtocol
        from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
        from websockets.uri import parse_uri

        extensions = enable_client_permessage_deflate(None) if deflate else None
        self.conn = ClientProtocol(parse_uri(url), extensions=extensions, max_size=2**16)
        self.request = self.conn.connect()
        for name, value in headers.items():
            self.request.headers[name] = value
        self.arrivals = arrivals
        self.loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    async def open(self, host: str, port: int, timeout: float) -> None:
        await self.loop.sock_connect(self.sock, (host, port))
        self.conn.send_request(self.request)
        self._flush()
        self.loop.add_reader(self.sock.fileno(), self._readable)
        await asyncio.wait_for(self.opened, timeout)

    def _readable(self) -> None:
        from websockets.frames import Opcode
        from websockets.http11 import Response

        try:
            data, ancillary, _, _ = self.sock.recvmsg(65536, 64)
        except BlockingIOError:
            return
        except OSError as exc:
            return self._lost(exc)
        if not data:
            return self._lost(None)
        read = time.time()
        received = read
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = TIMESPEC.unpack(payload[: TIMESPEC.size])
                received = seconds + nanoseconds / 1e9
        self.conn.receive_data(data)
        for event in self.conn.events_received():
            if isinstance(event, Response):
                if not self.opened.done():
                    if self.conn.handshake_exc is None:
                        self.opened.set_result(None)
                    else:
                        self.opened.set_exception(self.conn.handshake_exc)
            elif event.opcode is Opcode.TEXT and self.arrivals.open:
                self.arrivals.frames.append((received, read, event.data))
        self._flush()

    def _flush(self) -> None:
        for chunk in self.conn.data_to_send():
            if not chunk:
                return self.close()
            try:
                self.sock.send(chunk)  # a handshake, a pong or a close: far below the socket's buffer
            except OSError as exc:
                return self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        self.close()

    def close(self) -> None:
        from websockets.protocol import State

        if self.sock.fileno() < 0:
            return
        if self.conn.state is State.OPEN:
            self.conn.send_close()
            for chunk in self.conn.data_to_send():
                with contextlib.suppress(OSError):
                    self.sock.send(chunk)
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


async def client_worker(url: str, cookie: str, origin: str, deflate: bool) -> None:
    """Commands on stdin: "grow N", "measure SECONDS", "quit"; one JSON line answers each."""
    from websockets.exceptions import InvalidHandshake
    from websockets.uri import parse_uri

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    headers = {"Origin": origin, "Cookie": f"sessionid={cookie}"}
    target = parse_uri(url)
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)
    sockets: list[TickReader] = []
    failures = 0
    arrivals = Arrivals()  # only noted while measuring; decoding waits for the end of the window

    async def open_one() -> None:
        nonlocal failures
        async with gate:
            reader = TickReader(url, headers, deflate, arrivals)
            try:
                await reader.open(target.host, target.port, timeout=60)
            except (OSError, TimeoutError, InvalidHandshake):  # counted: the step reports what it reached
                failures += 1
                reader.close()  # a late handshake must not add uncounted frames
                return
        sockets.append(reader)

    def lags_between(start: float, end: float) -> dict[str, Any]:
        # Ticks made in [start, end - GRACE]: each has had GRACE_SECONDS to reach every socket before the
        # window closed, so a missing delivery is a real one, not the edge of the window.
        lags, read_lags, ticks, sent_at = [], [], set(), {}
        for received, read, data in arrivals.frames:
            frame = bytes(data)  # the parser hands out bytearrays
            if frame not in sent_at:
                sent_at[frame] = json.loads(frame)["iso"]
            iso = sent_at[frame]
            sent = datetime.fromisoformat(iso).timestamp()
            if start <= sent <= end - GRACE_SECONDS:
                lags.append((received - sent) * 1000)
                read_lags.append((read - sent) * 1000)
                ticks.add(iso)
        return {"lags": lags, "read_lags": read_lags, "ticks": sorted(ticks), "open": len(sockets)}

    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while True:
        command = (await stdin.readline()).decode().split()
        if not command or command[0] == "quit":
            break
        if command[0] == "grow":
            await asyncio.gather(*(open_one() for _ in range(int(command[1]))))
            answer: dict[str, Any] = {"open": len(sockets), "failed": failures}
        else:
            arrivals.frames.clear()
            start, arrivals.open = time.time(), True
            await asyncio.sleep(float(command[1]))
            arrivals.open = False
            answer = lags_between(start, time.time())
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    for reader in sockets:
        reader.close()


class Clients:
    """The client processes, driven over their stdin/stdout."""

    def __init__(self, url: str, cookie: str, origin: str, variant: Variant) -> None:
        deflate = "1" if variant.deflate else "0"
        argv = [sys.executable, __file__, "--client-worker", url, cookie, origin, deflate]
        self.processes = [
            subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                preexec_fn=CORES.pin(variant, server=False),
            )
            for _ in range(CLIENT_PROCESSES)
        ]

    def ask(self, commands: list[str]) -> list[dict[str, Any]]:
        for process, command in zip(self.processes, commands, strict=True):
            assert process.stdin is not None
            process.stdin.write(command + "\n")
            process.stdin.flush()
        answers = []
        for process in self.processes:
            assert process.stdout is not None
            answers.append(json.loads(process.stdout.readline()))
        return answers

    def grow(self, count: int) -> int:
        shares = [count // CLIENT_PROCESSES + (i < count % CLIENT_PROCESSES) for i in range(CLIENT_PROCESSES)]
        return sum(answer["open"] for answer in self.ask([f"grow {n}" for n in shares]))

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(process.pid) for process in self.processes)

    def close(self) -> None:
        for process in self.processes:
            try:
                assert process.stdin is not None
                process.stdin.write("quit\n")
                process.stdin.flush()
                process.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()


# -- the server side and the run --------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def site_env(workdir: Path, prefix: str, layer: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "client_site.settings",
        "REACTIVE_CLIENT": "alpha",
        "DATABASE_URL": f"sqlite:///{workdir / 'alpha.sqlite3'}",
        "REACTIVE_VAR_DIR": str(workdir),
        "REACTIVE_PREFIX": prefix,
        "REACTIVE_CHANNEL_LAYER": layer,
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14"),
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "bench-secret-key-0123456789abcdefghij",
        "REACTIVE_SSO_KEY": "bench-sso-key-0123456789abcdefghijklm",
        "REACTIVE_SERVE_STATIC": "0",
        "REACTIVE_LOG_LEVEL": "ERROR",
    }


SESSION_CODE = """
import django
django.setup()
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
user = get_user_model().objects.create(username="bench", first_name="Bench")
client = Client()
client.force_login(user)
print(client.cookies[settings.SESSION_COOKIE_NAME].value)
"""


def prepare(env: dict[str, str]) -> str:
    """Migrate the client database, create the user, return its session key."""
    migrate = [sys.executable, "-m", "django", "migrate", "--noinput"]
    subprocess.run(migrate, env=env, cwd=ROOT, check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, "-c", SESSION_CODE], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    )
    return done.stdout.strip().splitlines()[-1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def measure(step: Step, server: subprocess.Popen[bytes], clients: Clients, baseline_rss: int) -> None:
    server_before, clients_before = cpu_seconds(server.pid), clients.cpu_seconds()
    reports = clients.ask([f"measure {WINDOW_SECONDS}"] * CLIENT_PROCESSES)
    step.server_cpu = (cpu_seconds(server.pid) - server_before) / WINDOW_SECONDS
    step.clients_cpu = (clients.cpu_seconds() - clients_before) / WINDOW_SECONDS
    step.rss_kib = rss_kib(server.pid) - baseline_rss
    step.expected = len({tick for report in reports for tick in report["ticks"]}) * step.reached
    step.lags = [lag for report in reports for lag in report["lags"]]
    step.read_lags = [lag for report in reports for lag in report["read_lags"]]


def run_variant(
    variant: Variant, sizes: list[int], workdir: Path, cookie: str, deadline: float
) -> list[Step]:
    env = site_env(workdir, f"bench{uuid.uuid4().hex[:8]}", variant.layer)
    port = free_port()
    uvicorn = [str(VENV_BIN / "uvicorn"), "client_site.asgi:application", "--port", str(port)]
    server = subprocess.Popen(
        [*uvicorn, "--no-access-log", "--log-level", "critical", *variant.uvicorn_args()],
        env=env,
        cwd=ROOT,
        preexec_fn=CORES.pin(variant, server=True),
    )
    beat, clients, steps = None, None, []
    try:
        wait_port(port)
        base = f"127.0.0.1:{port}"
        clients = Clients(f"ws://{base}/time/tic/", cookie, f"http://{base}", variant)
        opened = clients.grow(1)  # imports, the first database and Redis use: not per-socket memory
        baseline_rss = rss_kib(server.pid)
        beat_argv = [str(VENV_BIN / "reactive"), "beat", "--interval", str(TICK_SECONDS)]
        beat = subprocess.Popen(
            beat_argv,
            env=env,
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
            preexec_fn=CORES.pin(variant, server=False),
        )
        for size in sizes:
            step = Step(size)
            steps.append(step)
            settle = SETTLE_SECONDS + SETTLE_SECONDS_PER_1000 * size / 1000
            if time.monotonic() + (size - opened) / CONNECTS_PER_SECOND + settle + WINDOW_SECONDS > deadline:
                break  # reported as not reached (or, for an optional variant, left out)
            started = time.monotonic()
            opened = step.reached = clients.grow(size - opened)
            step.connect_seconds = time.monotonic() - started
            time.sleep(settle)  # the server keeps ticking meanwhile
            measure(step, server, clients, baseline_rss)
            print(
                f"{variant.label:>36} {step.reached:>5} sockets: lag p50 {percentile(step.lags, 50):6.1f} ms "
                f"p99 {percentile(step.lags, 99):7.1f} ms, delivered {step.delivered:6.1%}, "
                f"{step.kib_per_socket:5.1f} KiB/socket, CPU server {step.server_cpu:4.0%} "
                f"clients {step.clients_cpu:4.0%}, connect {step.connect_seconds:.1f} s",
                flush=True,
            )
            if step.reached < size:
                break
    finally:
        if clients is not None:
            clients.close()
        for process in (beat, server):
            if process is not None:
                process.terminate()
                process.wait(30)
    return steps


def report(results: dict[Variant, list[Step]], budget: float) -> str:
    baseline = {step.size: step for step in results[Variant("redis")]}
    rows = []
    for variant, steps in results.items():
        for step in steps:
            if not step.lags:
                rows.append([f"{step.size:,}", variant.label, "not reached", "", "", "", "", "", "", "", ""])
                continue
            base = baseline.get(step.size)
            ratio = "baseline"
            if variant != Variant("redis") and base is not None and base.lags:
                p99_ratio = percentile(step.lags, 99) / percentile(base.lags, 99)
                ratio = f"{p99_ratio:.2f}x p99, {step.kib_per_socket / base.kib_per_socket:.2f}x memory"
            rows.append([
                f"{step.reached:,}", variant.label, f"{percentile(step.lags, 50):.1f}",
                f"{percentile(step.lags, 99):.1f}", f"{percentile(step.read_lags, 99):.1f}",
                f"{step.delivered:.1%}", f"{step.kib_per_socket:.1f}",
                f"{step.server_cpu:.0%}", f"{step.clients_cpu:.0%}", f"{step.connect_seconds:.1f}", ratio,
            ])  # fmt: skip
    headers = [
        "sockets",
        "layer",
        "lag p50 ms",
        "lag p99 ms",
        "p99 as read ms",
        "delivered",
        "KiB/socket",
        "server CPU",
        "clients CPU",
    ]
    headers += ["connect s", "vs RedisChannelLayer"]
    return (
        "## Clock fan-out (bench/fanout.py)\n\n"
        f"One uvicorn worker serving client_site; {CLIENT_PROCESSES} client processes (websockets' sans-I/O "
        f"protocol on uvloop) on the same machine; {CORES.describe()}; "
        f"`reactive beat --interval 0.5`; {WINDOW_SECONDS:g} s measuring window per "
        f"step after the connections settle; budget {budget:g} s; {machine()}; {load_note()}. Lag = the "
        "kernel's receive time of the frame at the client socket (SO_TIMESTAMPNS) - the tick's `iso` "
        '(stamped by the beat before its Redis SET and group_send); "as read" is when the client process '
        "got to it, which includes the clients' own wait for a core. Server CPU is "
        "the share of one core during the window (clients: both processes together).\n\n"
        + markdown_table(headers, rows)
        + "\n\n"
        + verdict(results)
    )


TARGET_SOCKETS, TARGET_KIB, TARGET_P99_MS = 5000, 100.0, 100.0


def verdict(results: dict[Variant, list[Step]]) -> str:
    """Which layer did better at the largest size reached by both, and the targets."""
    from reactive.settings import DEFAULT_CHANNEL_LAYER

    reached = {variant: {s.size: s for s in steps if s.lags} for variant, steps in results.items()}
    common_sizes = set(reached[Variant("redis")]) & set(reached[Variant("pubsub")])
    lines = ["Targets: 5,000 sockets on one process, at most 100 KiB each, p99 tick lag at most 100 ms."]
    default = reached.get(Variant(DEFAULT_CHANNEL_LAYER), {}).get(TARGET_SOCKETS)
    if default is not None:
        p99_ms, kib = percentile(default.lags, 99), default.kib_per_socket
        lines.append(
            f"The default layer at {TARGET_SOCKETS:,} sockets: p99 {p99_ms:.0f} ms "
            + ("(met)" if p99_ms <= TARGET_P99_MS else f"(missed, by {p99_ms - TARGET_P99_MS:.0f} ms)")
            + f", {kib:.0f} KiB a socket "
            + ("(met)." if kib <= TARGET_KIB else "(missed).")
        )
    if common_sizes:
        size = max(common_sizes)
        p99 = {v.layer: percentile(reached[v][size].lags, 99) for v in (Variant("redis"), Variant("pubsub"))}
        cpu = {
            v.layer: reached[v][size].server_cpu * TICK_SECONDS / size * 1e6
            for v in (Variant("redis"), Variant("pubsub"))
        }
        best = min(p99, key=lambda layer: p99[layer])
        worst = max(p99, key=lambda layer: p99[layer])
        close = max(p99.values()) / min(p99.values()) < SAME_WITHIN
        same_work = "each process is in the clock group once, so either layer carries one message per process per tick"
        lines.append(
            f"At {size:,} sockets {LAYER_NAMES[best]} had the lower p99 ({p99['redis']:.0f} ms for "
            f"RedisChannelLayer, {p99['pubsub']:.0f} ms for RedisPubSubChannelLayer)"
            + (
                f", within the {SAME_WITHIN:.1f}x that runs of one layer differ by here: {same_work}"
                if close
                else (
                    f", and the server's CPU per socket per tick differed with it ({cpu['redis']:.0f} and "
                    f"{cpu['pubsub']:.0f} µs) although {same_work}: the machine's load during each run, "
                    "not the layer"
                    if cpu[worst] > cpu[best] * CPU_GAP_WORTH_NAMING
                    else f" although {same_work}: run it again before reading the gap as the layer's"
                )
            )
            + f"; the default (REACTIVE_CHANNEL_LAYER unset) is {LAYER_NAMES[DEFAULT_CHANNEL_LAYER]}, which "
            "also keeps a message for a briefly busy consumer where pub/sub drops it."
        )
    largest = max(reached[Variant("redis")].values(), key=lambda s: s.reached, default=None)
    if largest is not None:
        # The server writes every socket in one pass per tick: its CPU per socket bounds the last one's lag.
        per_socket = largest.server_cpu * TICK_SECONDS / largest.reached * 1e6
        lines.append(
            f"At {largest.reached:,} sockets the server spent {per_socket:.0f} µs of CPU per socket per tick "
            f"(RedisChannelLayer), {per_socket * largest.reached / 1000:.0f} ms a tick: the pass that writes "
            "the frame to every socket, and the rest of the process's work (keepalive pings, Redis, the "
            "collector). The clients spent "
            f"{largest.clients_cpu * TICK_SECONDS / largest.reached * 1e6:.0f} µs per frame, "
            f"{largest.clients_cpu * TICK_SECONDS * 1000:.0f} ms of CPU per tick to read it, "
            + ("on their own core" if CORES.split else "on the server's core")
            + ': "as read" adds their wait for it.'
        )
    return " ".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Clock fan-out to N websockets on one uvicorn worker.")
    parser.add_argument("--sizes", default="200,1000,5000")
    parser.add_argument("--budget", type=float, default=float(os.environ.get("BENCH_BUDGET", "300")))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--client-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_worker:
        import uvloop

        url, cookie, origin, deflate = args.client_worker
        uvloop.run(client_worker(url, cookie, origin, deflate == "1"))
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    CORES.keep_bench_off_the_server()
    workdir = Path(tempfile.mkdtemp(prefix="reactive-fanout-"))
    cookie = prepare(site_env(workdir, "bench", "redis"))
    deadline = time.monotonic() + args.budget
    results: dict[Variant, list[Step]] = {}
    # The two layers share the budget; the last variants (deflate on, shared cores) run only in what is left.
    for share, variant in ((0.5, Variant("redis")), (1.0, Variant("pubsub"))):
        until = time.monotonic() + (deadline - time.monotonic()) * share
        results[variant] = run_variant(variant, sizes, workdir, cookie, until)
    for optional in (Variant("redis", deflate=True), Variant("redis", shared_cores=True)):
        if optional.shared_cores and not CORES.split:
            continue  # nothing was pinned: the other rows already share the core
        results[optional] = [
            s for s in run_variant(optional, sizes[-1:], workdir, cookie, deadline) if s.lags
        ]
    body = report(results, args.budget)
    print("\n" + body)
    if not args.no_write:
        write_section("fanout", body)


if __name__ == "__main__":
    main()
