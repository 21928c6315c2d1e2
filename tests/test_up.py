"""The parts of `reactive up` that need no processes: ports, the choice of AWS, the process table, free ports,
the live view's login links. The whole run is proven in tests/e2e/test_up.py."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reactive import settings
from reactive.errors import ConfigError, UsageError
from reactive.up import (
    LOCK_FILE,
    RUN_KEYS,
    Up,
    UpEvent,
    UpOptions,
    choose_port,
    free_port,
    lock_var_dir,
    port_free,
    process_specs,
    resolve_aws_mode,
    run_environment,
)


def options(tmp_path: Path, **extra: object) -> UpOptions:
    return UpOptions(clients=("alpha", "beta"), var_dir=tmp_path, **extra)  # type: ignore[arg-type]


def test_clients_get_8000_then_8002_and_up(tmp_path: Path) -> None:
    assert options(tmp_path).ports() == {"alpha": 8000, "beta": 8002}
    three = UpOptions(clients=("a", "b", "c"), var_dir=tmp_path)
    assert three.ports() == {"a": 8000, "b": 8002, "c": 8003}
    assert options(tmp_path, client_ports=(9000, 9001)).ports() == {"alpha": 9000, "beta": 9001}


@pytest.mark.parametrize(
    "extra", [{"client_ports": (9000,)}, {"client_ports": (9000, 9000)}, {"master_port": 8000}], ids=str
)
def test_port_mistakes_are_usage_errors(tmp_path: Path, extra: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        options(tmp_path, **extra).ports()


def test_aws_is_embedded_unless_an_endpoint_or_credentials_say_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    assert resolve_aws_mode("auto") == "embedded"
    assert resolve_aws_mode("external") == "external"
    (tmp_path / "none").write_text("[default]\n")
    assert resolve_aws_mode("auto") == "external"
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "still-none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    assert resolve_aws_mode("auto") == "external"
    assert resolve_aws_mode("embedded") == "embedded"


def test_every_role_of_every_site_is_a_process_with_its_own_log(tmp_path: Path) -> None:
    specs = {
        spec.name: spec
        for spec in process_specs(options(tmp_path, master_port=9001, client_ports=(9000, 9002)))
    }
    roles = ("web", "worker", "beat")
    assert set(specs) == {f"{site}-{role}" for site in ("master", "alpha", "beta") for role in roles} | {
        "alpha-listener",
        "beta-listener",
    }
    argv = {name: " ".join(spec.argv) for name, spec in specs.items()}
    assert (
        "uvicorn master_site.asgi:application" in argv["master-web"] and "--port 9001" in argv["master-web"]
    )
    assert "uvicorn client_site.asgi:application" in argv["beta-web"] and "--port 9002" in argv["beta-web"]
    assert "--ws-per-message-deflate false" in argv["beta-web"]  # tiny frames: no compressor per socket
    assert "celery -A master_site worker" in argv["master-worker"]
    assert "celery -A client_site beat" in argv["alpha-beat"]
    assert "listen --client beta" in argv["beta-listener"]
    assert specs["alpha-web"].env["REACTIVE_CLIENT"] == "alpha"
    assert specs["master-beat"].env["DJANGO_SETTINGS_MODULE"] == "master_site.settings"
    for spec in specs.values():
        assert spec.log_path == tmp_path / "log" / f"{spec.name}.log"
    beat_schedules = {a for spec in specs.values() for a in spec.argv if str(a).endswith("beat-schedule")}
    assert len(beat_schedules) == 3, "each beat needs a schedule file of its own"


def test_a_port_someone_listens_on_is_not_free() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert not port_free(port, "127.0.0.1")
    assert port_free(port, "127.0.0.1")


@pytest.mark.parametrize("host", ["10.254.254.254", "nosuchhost.invalid"])
def test_a_host_this_machine_cannot_listen_on_is_said_so_not_called_a_busy_port(host: str) -> None:
    with pytest.raises(ConfigError, match=f"--host {host}: cannot listen there"):
        port_free(19001, host)


def test_our_own_redis_stops_when_up_is_killed_outright(tmp_path: Path) -> None:
    """SIGKILL gives `up` no chance to stop what it started: its redis-server used to live on, owned by
    init, one more for every run killed so. It now dies with `up`, as the supervised processes do."""
    import psutil

    (tmp_path / "log").mkdir()
    script = (
        "import signal, sys; from pathlib import Path; from reactive.up import OwnRedis; "
        "print(OwnRedis.start(Path(sys.argv[1]), '127.0.0.1').process.pid, flush=True); signal.pause()"
    )
    up = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        redis_server = psutil.Process(int(up.stdout.readline()))  # type: ignore[union-attr]
        assert "redis-server" in " ".join(redis_server.cmdline())
    finally:
        up.kill()
        up.wait()
    _, alive = psutil.wait_procs([redis_server], timeout=10)
    for survivor in alive:  # not left behind by the test either
        survivor.kill()
    assert not alive, "the redis-server outlived the `up` that started it"


@pytest.mark.django_db
@pytest.mark.usefixtures("captured")
def test_the_live_view_offers_login_links_only_while_the_demo_user_can_use_them(tmp_path: Path) -> None:
    from django.contrib.auth import get_user_model

    events: list[UpEvent] = []
    up = Up(options(tmp_path), on_event=events.append)
    alice = get_user_model().objects.create_user("alice")

    up._make_login_links()
    assert sorted(up.links) == ["alpha as alice", "beta as alice"]
    assert "/sso/login?token=" in up.links["beta as alice"]

    alice.is_staff = True  # made staff in the admin during the demo: no client would sign her in
    alice.save()
    up._make_login_links(announce=False)
    up._make_login_links(announce=False)
    assert up.links == {"alpha": "http://127.0.0.1:8000/", "beta": "http://127.0.0.1:8002/"}
    warnings = [e.text for e in events if e.kind == "warning"]
    assert warnings == ["no login links: alice is not synced to the client sites (REACTIVE_SYNC_PREDICATE "
                        "leaves the account out)"]  # fmt: skip

    alice.is_staff = False
    alice.save()
    up._make_login_links(announce=False)
    assert sorted(up.links) == ["alpha as alice", "beta as alice"]


# -- --host: the sites accept the address they are reached at ---------------------------------------------
def validate_host(netloc: str, allowed: list[str]) -> bool:
    """Whether Django, given these ALLOWED_HOSTS, answers a request whose Host is ``netloc`` (else 400)."""
    from django.core.exceptions import DisallowedHost
    from django.test import RequestFactory, override_settings

    with override_settings(ALLOWED_HOSTS=allowed, DEBUG=False):
        try:
            RequestFactory(HTTP_HOST=netloc).get("/health").get_host()
        except DisallowedHost:
            return False
    return True


@pytest.mark.parametrize("host", ["192.0.2.2", "fd00::2"])
def test_sites_bound_to_an_address_accept_requests_for_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, host: str
) -> None:
    monkeypatch.delenv("DJANGO_ALLOWED_HOSTS", raising=False)
    env = run_environment(options(tmp_path, host=host, master_port=9001, client_ports=(9000, 9002)))
    allowed = env["DJANGO_ALLOWED_HOSTS"].split(",")
    up = Up(options(tmp_path, host=host, master_port=9001, client_ports=(9000, 9002)))
    for url in [
        *up._web_urls().values(),
        *(u.split("=", 1)[1] for u in env["REACTIVE_CLIENT_URLS"].split(",")),
        env["REACTIVE_MASTER_URL"],  # the clients' sign-in pages link to it
    ]:
        netloc = url.removeprefix("http://")
        assert netloc.rsplit(":", 1)[0].strip("[]") == host, url  # health checks and links use the address
        assert validate_host(netloc, allowed), f"{netloc} would be answered 400 DisallowedHost"
    for name in ("localhost", "127.0.0.1", "[::1]"):
        assert validate_host(f"{name}:9000", allowed), "the loopback names stay allowed"


def test_a_wildcard_host_is_reached_on_loopback_and_keeps_what_the_operator_allowed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DJANGO_ALLOWED_HOSTS", "demo.example.org")
    for host in ("0.0.0.0", "::"):
        env = run_environment(options(tmp_path, host=host))
        allowed = env["DJANGO_ALLOWED_HOSTS"].split(",")
        assert env["REACTIVE_CLIENT_URLS"] == "alpha=http://127.0.0.1:8000,beta=http://127.0.0.1:8002"
        assert env["REACTIVE_MASTER_URL"] == "http://127.0.0.1:8001"
        assert Up(options(tmp_path, host=host))._web_urls() == {
            "master-web": "http://127.0.0.1:8001",
            "alpha-web": "http://127.0.0.1:8000",
            "beta-web": "http://127.0.0.1:8002",
        }
        assert validate_host("127.0.0.1:8001", allowed) and validate_host("demo.example.org", allowed)
        assert validate_host(f"{socket.gethostname()}:8001", allowed)
        assert "*" not in allowed and host not in allowed


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.2"])
def test_a_run_others_can_reach_signs_with_keys_of_its_own_and_no_known_admin_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, host: str
) -> None:
    """The sites refuse the development keys for any host but this machine's (anyone could sign a login
    link with them), and admin/admin on a LAN is an open door: such a run makes its own, unless set."""
    for name in (*RUN_KEYS, "DJANGO_ALLOWED_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    exposed = options(tmp_path, host=host)
    env = run_environment(exposed)
    assert all(len(env[name]) >= 48 for name in RUN_KEYS)
    assert run_environment(exposed)["REACTIVE_SSO_KEY"] != env["REACTIVE_SSO_KEY"]  # made per run
    assert exposed.admin_password not in ("admin", "") and exposed.admin_password == exposed.admin_password
    monkeypatch.setenv("REACTIVE_SSO_KEY", "q3J0cI3S2m3bqkzqg1oPp2r9kqH8y7s1T2uVwXyZ")
    assert "REACTIVE_SSO_KEY" not in run_environment(exposed)  # the operator's own stands
    local = options(tmp_path)
    assert not set(RUN_KEYS) & set(run_environment(local)) and local.admin_password == "admin"
    monkeypatch.setenv("DJANGO_ALLOWED_HOSTS", env["DJANGO_ALLOWED_HOSTS"])
    monkeypatch.setenv("DJANGO_SECRET_KEY", env["DJANGO_SECRET_KEY"])
    assert settings.secret_key(True) == env["DJANGO_SECRET_KEY"]  # what the sites then read


@pytest.mark.django_db
def test_a_reachable_run_closes_the_admin_admin_door_and_the_next_loopback_run_opens_it_again(
    tmp_path: Path,
) -> None:
    """Whatever --demo says: admin/admin must not stay on a LAN. A password anyone set (the owner, before
    or after, or a real admin of a database DATABASE_URL names) is never touched; the hints name the
    admin's password only when it is the one the run says."""
    from django.contrib.auth import get_user_model

    from reactive.up import ADMIN_ROTATED, admin_password_known, seed_demo_users, settle_admin_password

    def admin() -> Any:
        return get_user_model().objects.get(username="admin")

    def set_own(password: str) -> None:
        chosen = admin()
        chosen.set_password(password)
        chosen.save()

    assert "admin" in seed_demo_users()
    assert not settle_admin_password(tmp_path, exposed=False, password="admin")  # nothing to do
    assert settle_admin_password(tmp_path, exposed=True, password="lan-random")  # --no-demo too
    assert admin().check_password("lan-random") and admin().is_superuser
    assert stat.S_IMODE((tmp_path / ADMIN_ROTATED).stat().st_mode) == 0o600
    assert settle_admin_password(tmp_path, exposed=False, password="admin")
    assert admin().check_password("admin") and not (tmp_path / ADMIN_ROTATED).exists()

    assert settle_admin_password(tmp_path, exposed=True, password="lan-2")
    set_own("the-owners-own")  # set during the reachable run
    assert not settle_admin_password(tmp_path, exposed=False, password="admin")
    assert admin().check_password("the-owners-own") and not admin_password_known("admin")

    assert not settle_admin_password(tmp_path, exposed=True, password="lan-3")  # set before: it stands
    assert admin().check_password("the-owners-own") and not (tmp_path / ADMIN_ROTATED).exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.2"])
def test_a_run_bound_beyond_loopback_is_exposed_whatever_names_it_answers_to(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, host: str
) -> None:
    """A request names the Host it likes: "localhost" passes ALLOWED_HOSTS from the LAN too."""
    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")
    monkeypatch.setattr("reactive.up._outward_addresses", lambda: [])
    assert options(tmp_path, host=host).exposed
    assert not options(tmp_path).exposed


# -- moto never takes a site's port -----------------------------------------------------------------------
def test_a_port_reserved_for_a_site_is_never_chosen_for_a_service() -> None:
    port = free_port()
    assert choose_port(port, "127.0.0.1") == port
    assert choose_port(port, "127.0.0.1", reserved={port}) != port
    assert choose_port(0, "127.0.0.1", reserved={port}) != port


def test_the_embedded_moto_leaves_a_sites_port_to_the_site(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "REACTIVE_MAX_RECEIVES", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)  # and restored after: _start_aws exports them
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    site_port = free_port()
    # `reactive up --client-port P --moto-port P`: P is free until the site binds it, after moto started.
    up = Up(options(tmp_path, aws="embedded", moto_port=site_port, client_ports=(site_port, free_port())))
    with contextlib.ExitStack() as stack:
        up._start_aws(stack)
        assert up.moto_port and up.moto_port != site_port
        assert port_free(site_port, "127.0.0.1")
        assert os.environ["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{up.moto_port}"


# -- var/up.env: another terminal sees the names, backends and databases of this run ------------------------
def sourced(env_file: Path, before: dict[str, str]) -> dict[str, str]:
    """The environment of a shell that had ``before`` and then ran `source var/up.env`."""
    script = f"source {env_file} && env -0"
    output = subprocess.run(
        ["bash", "-c", script], env={"PATH": "/usr/bin:/bin", **before}, capture_output=True, check=True
    ).stdout.decode()
    return dict(item.split("=", 1) for item in output.split("\0") if "=" in item)


def test_the_env_file_carries_every_setting_that_changes_names_backends_or_databases(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run = {
        "REACTIVE_FIFO": "1",
        "REACTIVE_CHANNEL_LAYER": "pubsub",
        "REACTIVE_PREFIX": "probe",
        "DATABASE_URL": "postgres://u:p@db/{client}",
        "DATABASE_URL_ALPHA": "sqlite:////tmp/alpha's.sqlite3",
        "REACTIVE_SSO_KEY": "k e y",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5999",
    }
    for name, value in run.items():
        monkeypatch.setenv(name, value)
    up = Up(options(tmp_path))
    up.moto_port = 5999
    env_file = up._write_env_file()
    other_terminal = sourced(env_file, {})
    for name, value in run.items():
        assert other_terminal.get(name) == value, name
    assert other_terminal["REDIS_URL"] == up.redis_url
    assert "DATABASE_URL_BETA" not in other_terminal
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600, "it holds the SSO key"


def test_the_env_file_unsets_what_this_run_does_not_have(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stale = {"REACTIVE_FIFO": "1", "REACTIVE_CHANNEL_LAYER": "pubsub", "DATABASE_URL_BETA": "postgres://x/y"}
    for name in [*stale, "REACTIVE_SSO_KEY", "DATABASE_URL"]:
        monkeypatch.delenv(name, raising=False)
    up = Up(options(tmp_path))
    other_terminal = sourced(up._write_env_file(), {**stale, "HOME": "/nowhere"})
    assert not set(stale) & set(other_terminal), "a terminal that sourced a FIFO run's file follows this one"
    assert other_terminal["HOME"] == "/nowhere"


# -- Ctrl-C during start-up ---------------------------------------------------------------------------------
def test_ctrl_c_during_start_up_stops_what_was_started_and_exits_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stopped: list[str] = []

    def stop_redis() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while stopping must not cut a stop short
        stopped.append("redis")

    def prepare(self: Up, stack: contextlib.ExitStack) -> list[object]:
        stack.callback(stopped.append, "moto")
        stack.callback(stop_redis)
        os.kill(os.getpid(), signal.SIGINT)
        threading.Event().wait(5)  # the SIGINT's handler interrupts it at once; 5 s only bound a failure
        raise AssertionError("SIGINT did not interrupt the start-up")

    monkeypatch.setattr(Up, "prepare", prepare)
    events: list[UpEvent] = []
    before = signal.getsignal(signal.SIGINT)
    try:
        code = Up(options(tmp_path), on_event=events.append).run()
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C during start-up escaped Up.run (the CLI would exit 130)")
    assert code == 0
    assert stopped == ["redis", "moto"]
    assert events[-1].kind == "stopped"
    assert signal.getsignal(signal.SIGINT) is before


# -- one run per var directory ----------------------------------------------------------------------------
REACTIVE = str(Path(sys.executable).parent / "reactive")


@pytest.fixture
def held_var(tmp_path: Path) -> Iterator[Path]:
    """A var directory a running `reactive up` (this process) holds, as it does for its whole life."""
    descriptor = lock_var_dir(tmp_path)
    yield tmp_path
    os.close(descriptor)


def test_the_var_directory_up_makes_and_its_databases_are_this_users_alone(tmp_path: Path) -> None:
    """The folder up makes is 0700; one that exists keeps its owner's modes (`--var .`), run after run;
    the SQLite files in it (the master's holds password hashes) are made 0600 after the migrations."""
    from reactive.up import protect_databases

    old = os.umask(0o022)
    try:
        os.close(lock_var_dir(tmp_path / "var"))
        (tmp_path / "project").mkdir(mode=0o755)
        for _ in range(2):
            os.close(lock_var_dir(tmp_path / "project"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "project").stat().st_mode) == 0o755
    for name in ("master.sqlite3", "master.sqlite3-wal", "notes.txt"):
        (tmp_path / "project" / name).write_text("")
        (tmp_path / "project" / name).chmod(0o644)
    protect_databases(tmp_path / "project")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "project").iterdir() if p.is_file()}
    assert modes["master.sqlite3"] == modes["master.sqlite3-wal"] == 0o600 and modes["notes.txt"] == 0o644


def test_a_second_up_on_the_same_var_directory_is_refused_before_it_touches_anything(
    monkeypatch: pytest.MonkeyPatch, held_var: Path
) -> None:
    var = held_var
    (var / "up.env").write_text("# the first run's\n")

    def prepare(self: Up, stack: contextlib.ExitStack) -> list[object]:
        raise AssertionError("the second run went on to prepare its services")

    monkeypatch.setattr(Up, "prepare", prepare)
    refusal = re.escape(f"{var} is in use by another `reactive up` (pid {os.getpid()})")
    with pytest.raises(ConfigError, match=refusal):
        Up(options(var)).run()

    # The command, as the README's advice for a busy port would start it: exit 1, one line, up.env untouched.
    with socket.socket() as busy:  # were the lock not checked first, this port would stop the run anyway
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {**os.environ, "COLUMNS": "200"}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        started = time.monotonic()
        done = subprocess.run(
            [REACTIVE, "up", "--plain", "--var", str(var), "--clients", "alpha,beta"]
            + ["--master-port", str(busy.getsockname()[1]), "--client-port", "9000", "--client-port", "9002"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and not done.stdout.strip(), done.stdout + done.stderr
    assert lines[0].startswith(f"error: {var.resolve()} is in use by another `reactive up`"), lines[0]
    assert "pass --var DIR" in lines[0]
    assert time.monotonic() - started < 60
    assert (var / "up.env").read_text() == "# the first run's\n"
    assert not (var / "log").exists(), "the second run prepared the directory"


def test_a_run_that_is_killed_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from pathlib import Path; from reactive.up import lock_var_dir; "
         f"lock_var_dir(Path({str(tmp_path)!r})); print('locked', flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            lock_var_dir(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()
    os.close(lock_var_dir(tmp_path))


# -- Ctrl-C: the sites going down is the stop, not news -----------------------------------------------------
def test_the_monitor_reports_nothing_once_the_stop_has_begun(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from reactive.supervisor import Supervisor
    from reactive.transport.sqs import SqsTransport

    events: list[UpEvent] = []
    up = Up(options(tmp_path, demo=False), on_event=events.append)
    up.supervisor = Supervisor([])
    checks_after_stop: list[str] = []

    def health(url: str) -> str:
        assert up.supervisor is not None
        if not up.ready:
            return "ok"
        if up.supervisor.stopping:
            checks_after_stop.append(url)
        else:
            up.supervisor.stop()  # Ctrl-C while this check is in flight: the sites are going down
        return "failing"

    monkeypatch.setattr("reactive.up.health", health)
    monkeypatch.setattr("reactive.up.SAMPLE_SECONDS", 0.01)
    monkeypatch.setattr(SqsTransport, "from_settings", lambda: None)
    monkeypatch.setattr(up, "_sample_queues", lambda transport: None)
    monkeypatch.setattr(up, "_sample_outbox", lambda: None)
    monitor = threading.Thread(target=up._monitor, daemon=True)
    monitor.start()
    monitor.join(5)  # the run sets _done only once every child is stopped: the monitor must not wait for it
    kept_sampling = monitor.is_alive()
    up._done.set()
    monitor.join(5)
    assert [e.text for e in events] == ["ready: every site answers /health"], "no /health warnings on a stop"
    assert "failing" not in up._health.values(), "the live view would show the stop as a failure"
    assert not checks_after_stop, "health checks after the stop began"
    assert not kept_sampling, "the monitor kept sampling after the stop began"


@pytest.mark.django_db
def test_demo_users_join_on_a_whole_second() -> None:
    """The tour edits a first name in the admin, whose date and time fields drop microseconds: the first
    save there must not also change date_joined (the README shows the event as `(first_name)`)."""
    from django.contrib.auth import get_user_model

    from reactive.up import seed_demo_users

    assert "alice" in seed_demo_users()
    assert {u.date_joined.microsecond for u in get_user_model().objects.exclude(username="admin")} == {0}
