"""The manners of the operations commands, as an operator sees them: the real `reactive` script in a process.

Exit codes (0 ok, 1 failure, 2 usage, 3 unreachable), one readable line on stderr, tracebacks only with
--debug, --version, shell completion, and an example in every command's help.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.support.services import free_port

REACTIVE = str(Path(sys.executable).parent / "reactive")
OPERATIONS = [
    ["dlq", "list", "--client", "alpha"],
    ["replay-dlq", "--client", "alpha", "--yes"],
    ["status"],
    ["sync", "--client", "alpha"],
]


def reactive(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "REACTIVE_VAR_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    full.pop("DJANGO_SETTINGS_MODULE", None)  # pytest's own settings must not leak into the command
    return subprocess.run([REACTIVE, *args], env=full, capture_output=True, text=True, timeout=120)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in done.stderr
    return lines[0]


@pytest.mark.parametrize("command", OPERATIONS, ids=lambda c: " ".join(c[:2]))
def test_an_unreachable_endpoint_is_exit_3_in_one_line(
    command: list[str], aws_env: dict[str, str], tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = {
        **aws_env,
        "AWS_ENDPOINT_URL": dead,
        "DATABASE_URL": "sqlite://:memory:",
    }  # a master database exists
    done = reactive(*command, env=env, tmp_path=tmp_path)
    assert done.returncode == 3, done.stderr
    assert f"cannot reach {dead}" in one_error_line(done)


def test_a_wrong_client_name_and_a_missing_queue(provisioned: dict[str, str], tmp_path: Path) -> None:
    done = reactive("dlq", "list", "--client", "gamma", env=provisioned, tmp_path=tmp_path)
    assert done.returncode == 1
    line = one_error_line(done)
    assert "client 'gamma': is the name right (REACTIVE_CLIENTS: alpha, beta)" in line
    assert "reactive provision --client gamma" in line

    malformed = reactive("replay-dlq", "--client", "Bad!", "--yes", env=provisioned, tmp_path=tmp_path)
    assert malformed.returncode == 2  # a usage error
    assert "--client: invalid client name 'Bad!'" in one_error_line(malformed)


def test_nothing_provisioned_yet(aws_env: dict[str, str], tmp_path: Path) -> None:
    listed = reactive("dlq", "list", "--client", "alpha", env=aws_env, tmp_path=tmp_path)
    assert listed.returncode == 1 and "run `reactive provision --client alpha`" in one_error_line(listed)
    shown = reactive("status", env=aws_env, tmp_path=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "missing" in shown.stdout and "queue" in shown.stdout
    assert reactive("status", "--check", env=aws_env, tmp_path=tmp_path).returncode == 1


def test_missing_credentials_get_their_own_message(provisioned: dict[str, str], tmp_path: Path) -> None:
    env = {
        **provisioned,
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    done = reactive("dlq", "list", "--client", "alpha", env=env, tmp_path=tmp_path)
    assert done.returncode == 1
    assert "no AWS credentials found" in one_error_line(done)


def test_debug_shows_the_traceback(provisioned: dict[str, str], tmp_path: Path) -> None:
    done = reactive("--debug", "dlq", "list", "--client", "gamma", env=provisioned, tmp_path=tmp_path)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "reactive.errors.ResourceNotFound" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_an_unreachable_client_database_is_exit_3(provisioned: dict[str, str], tmp_path: Path) -> None:
    master = tmp_path / "master.sqlite3"
    master.touch()
    url = "postgres://ops:s3cret@127.0.0.1:1/alpha"
    done = reactive(
        "verify", "--client", "alpha", "--master-db", f"sqlite:///{master}", "--client-db", url,
        env=provisioned, tmp_path=tmp_path,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    line = one_error_line(done)
    assert "cannot reach the client alpha database (postgres://ops:***@127.0.0.1:1/alpha)" in line
    assert "s3cret" not in done.stderr


def test_a_database_never_migrated_says_how_to_migrate(tmp_path: Path) -> None:
    done = reactive("login-link", "alice", "--client", "alpha", env={"DATABASE_URL": ""}, tmp_path=tmp_path)
    assert done.returncode == 1, done.stderr  # not an outage (3): the database answered
    line = one_error_line(done)
    assert f"no master database at {tmp_path / 'var' / 'master.sqlite3'} (never migrated?)" in line
    assert "run `DJANGO_SETTINGS_MODULE=master_site.settings python -m django migrate`" in line
    assert not (tmp_path / "var" / "master.sqlite3").exists()  # looking created no empty database


def test_a_listener_on_a_database_never_migrated_stops_at_once_and_says_how_to_migrate(
    provisioned: dict[str, str], tmp_path: Path
) -> None:
    env = {**provisioned, "DATABASE_URL": "", "DATABASE_URL_ALPHA": ""}
    done = reactive("listen", "--client", "alpha", "--wait", "1", env=env, tmp_path=tmp_path)
    assert done.returncode == 1, done.stderr  # rather than retrying for ever what only a migration mends
    line = done.stderr.strip().splitlines()[-1]  # after the listener's own "polling" log line
    assert line.startswith("error: ") and "Traceback" not in done.stderr
    assert f"{tmp_path / 'var' / 'client-alpha.sqlite3'} is not migrated (no such table: " in line
    assert (
        "`DJANGO_SETTINGS_MODULE=client_site.settings REACTIVE_CLIENT=alpha python -m django migrate`" in line
    )


def test_a_listener_on_a_database_one_migration_behind_stops_at_once_too(
    provisioned: dict[str, str], tmp_path: Path
) -> None:
    """An upgrade whose migrate step was skipped: the tables are there, a column is not. Every batch would
    fail (to the DLQ, in the end) while the listener looked alive."""
    env = {**provisioned, "DATABASE_URL": "", "DATABASE_URL_ALPHA": ""}
    django = {**os.environ, **env, "REACTIVE_VAR_DIR": str(tmp_path / "var")}
    django.update(DJANGO_SETTINGS_MODULE="client_site.settings", REACTIVE_CLIENT="alpha")
    for target in ([], ["reactive", "0001"]):  # all, then one step back
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "--noinput", *target],
            env=django,
            check=True,
            timeout=120,
        )
    done = reactive("listen", "--client", "alpha", "--wait", "1", env=env, tmp_path=tmp_path)
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "is not migrated (no such column: " in line and "held_username" in line, line


class _UndefinedTable(Exception):
    sqlstate = "42P01"  # what psycopg puts on the error Django wraps, in any locale


def test_postgresql_says_missing_table_by_sqlstate_and_an_outage_stays_an_outage() -> None:
    from django.db import OperationalError, ProgrammingError

    from cli.main import translate

    wrapped = ProgrammingError("Relation »auth_user« existiert nicht\nLINE 1: SELECT ...")
    wrapped.__cause__ = _UndefinedTable()
    missing = translate(wrapped)
    assert missing is not None and missing.exit_code == 1
    assert "is not migrated (Relation »auth_user« existiert nicht): run `" in str(missing)
    assert "LINE 1" not in str(missing)
    for outage in ('FATAL: database "relations" does not exist', "connection refused"):
        down = translate(OperationalError(outage))
        assert down is not None and down.exit_code == 3 and "cannot use the database" in str(down)


def test_version_and_shell_completion(tmp_path: Path) -> None:
    version = reactive("--version", env={}, tmp_path=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("reactive ")
    commands = reactive(
        env={"_REACTIVE_COMPLETE": "complete_bash", "COMP_WORDS": "reactive repl", "COMP_CWORD": "1"},
        tmp_path=tmp_path,
    )
    assert commands.stdout.split() == ["replay-dlq"]
    clients = reactive(
        env={
            "_REACTIVE_COMPLETE": "complete_bash",
            "COMP_WORDS": "reactive dlq list --client b",
            "COMP_CWORD": "4",
            "REACTIVE_CLIENTS": "alpha,beta,bravo",
        },
        tmp_path=tmp_path,
    )
    assert clients.stdout.split() == ["beta", "bravo"]
    script = reactive("--show-completion", "bash", env={}, tmp_path=tmp_path)
    assert "_REACTIVE_COMPLETE" in script.stdout


@pytest.mark.parametrize(
    "command",
    [["dlq", "list"], ["dlq", "show"], ["dlq", "purge"], ["replay-dlq"], ["status"], ["sync"], ["verify"]],
    ids=" ".join,
)
def test_every_command_help_has_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert f"Example: reactive {' '.join(command)}" in " ".join(result.stdout.split())


def test_a_client_command_refuses_the_masters_settings(provisioned: dict[str, str], tmp_path: Path) -> None:
    """DJANGO_SETTINGS_MODULE exported for `sync` must not make a listener write into the master's users."""
    env = {**provisioned, "DJANGO_SETTINGS_MODULE": "master_site.settings"}
    full = {**os.environ, **env, "REACTIVE_VAR_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    done = subprocess.run(
        [REACTIVE, "listen", "--client", "alpha", "--once"],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "DJANGO_SETTINGS_MODULE=master_site.settings is not a client site's settings" in one_error_line(
        done
    )
    assert not (tmp_path / "var" / "master.sqlite3").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["login-link", "erin", "--client", "alpha"],
        ["sync", "--client", "alpha"],
        ["verify", "--client", "alpha"],
    ],
    ids=lambda c: c[0],
)
def test_a_master_command_refuses_a_clients_settings(command: list[str], tmp_path: Path) -> None:
    """Every client container exports its settings: run there, `login-link` put the replica's local pk in
    the link as the master key (signing its holder in as another user), `sync` relayed the client's rows."""
    env = {
        "DJANGO_SETTINGS_MODULE": "client_site.settings",
        "REACTIVE_CLIENT": "alpha",
        "REACTIVE_SSO_KEY": "k",
    }
    full = {**os.environ, **env, "REACTIVE_VAR_DIR": str(tmp_path / "var"), "COLUMNS": "200"}
    done = subprocess.run([REACTIVE, *command], env=full, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "is the settings of client 'alpha'" in one_error_line(done)


def test_manage_py_listener_errors_are_one_line_with_the_exit_code_of_reactive_listen(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**os.environ, **aws_env, "REACTIVE_VAR_DIR": str(tmp_path / "var"), "REACTIVE_CLIENT": "alpha"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    manage = [sys.executable, "client_site/manage.py"]
    migrated = subprocess.run(
        [*manage, "migrate", "-v0"], env=env, capture_output=True, text=True, timeout=120
    )
    assert migrated.returncode == 0, migrated.stderr
    for endpoint, code, said in (
        (aws_env["AWS_ENDPOINT_URL"], 1, "does not exist"),  # nothing provisioned
        (f"http://127.0.0.1:{free_port()}", 3, "cannot reach"),
    ):
        done = subprocess.run(
            [*manage, "listener", "--once"],
            env={**env, "AWS_ENDPOINT_URL": endpoint},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == code, done.stderr
        assert "Traceback" not in done.stderr and said in done.stderr


def test_a_database_refusal_is_one_line_exit_1() -> None:
    from django.db import ProgrammingError

    from cli.main import translate

    error = translate(ProgrammingError("permission denied for table auth_user"))
    assert error is not None and error.exit_code == 1
    assert str(error) == "the database refused: permission denied for table auth_user"


def test_an_error_holding_brackets_is_printed_as_text(aws_env: dict[str, str], tmp_path: Path) -> None:
    """Errors quote what they were given; rich markup in it must neither vanish nor crash the line."""
    done = reactive("provision", "--client", "[/x]", "--dry-run", env=aws_env, tmp_path=tmp_path)
    assert done.returncode == 2
    assert "invalid client name '[/x]'" in one_error_line(done)


@pytest.mark.parametrize(
    "command", [["sync", "--client", "alpha"], ["login-link", "alice", "--client", "alpha"]]
)
def test_a_master_command_never_creates_an_empty_master_database(
    command: list[str], aws_env: dict[str, str], tmp_path: Path
) -> None:
    done = reactive(*command, env=aws_env, tmp_path=tmp_path)
    assert done.returncode == 1
    assert "no master database at" in one_error_line(done)
    assert not (tmp_path / "var" / "master.sqlite3").exists()


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("DATABASE_URL", "postgresql+psycopg://db/app", "DATABASE_URL cannot be read"),
        ("DATABASE_URL", "bogus-url", "DATABASE_URL cannot be read"),
        ("REACTIVE_LOG_LEVEL", "verbose", "REACTIVE_LOG_LEVEL must be one of DEBUG, INFO"),
        ("REACTIVE_TRANSPORT", "memroy", "REACTIVE_TRANSPORT must be one of sqs, memory, got 'memroy'"),
    ],
)
def test_a_malformed_variable_is_one_line_exit_1(
    variable: str, value: str, says: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**aws_env, "DATABASE_URL": "sqlite://:memory:", variable: value}  # a master database exists
    done = reactive("sync", "--client", "alpha", env=env, tmp_path=tmp_path)
    assert done.returncode == 1, done.stderr
    assert says in one_error_line(done)


@pytest.mark.parametrize(
    ("variable", "value", "command", "says"),
    [
        ("AWS_ENDPOINT_URL", "notaurl", ["status"], "AWS_ENDPOINT_URL must be an http(s) address"),
        (
            "AWS_DEFAULT_REGION",
            "bad region!",
            ["dlq", "list", "--client", "alpha"],
            "AWS_DEFAULT_REGION must be",
        ),
        ("REDIS_URL", "notaurl", ["beat", "--once", "--client", "alpha"], "REDIS_URL must be a redis://"),
        ("REACTIVE_REDIS_MAX_CONNECTIONS", "abc", ["beat", "--once", "--client", "alpha"], "a whole number"),
        ("TIME_ZONE", "Mars/Base", ["beat", "--once", "--client", "alpha"], "TIME_ZONE must be a zone name"),
        ("REACTIVE_VAR_DIR", "{file}", ["login-link", "a", "--client", "alpha"], "cannot make the folder"),
        (
            "REACTIVE_CLIENT_URLS",
            "alpha=notaurl",
            ["login-link", "a", "--client", "alpha"],
            "NAME=http(s)://",
        ),
        ("REACTIVE_FIFO", "maybe", ["status"], "REACTIVE_FIFO must be one of 1/true/yes/on"),
    ],
    ids=lambda value: value if isinstance(value, str) and value.isupper() else None,
)
def test_a_malformed_setting_is_a_configuration_error_not_a_traceback_nor_an_outage(
    variable: str, value: str, command: list[str], says: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """Exit 1 and one line naming the variable: a traceback, or exit 3 (which says a service is down),
    sent the operator looking in the wrong place."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    env = {**aws_env, "REACTIVE_SSO_KEY": "k", variable: value.format(file=a_file)}
    full = {**os.environ, "REACTIVE_VAR_DIR": str(tmp_path / "var"), "COLUMNS": "200", **env}
    full.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run([REACTIVE, *command], env=full, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert says in one_error_line(done)


def test_reactive_debug_false_means_off(tmp_path: Path) -> None:
    dead_redis = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REACTIVE_DEBUG": "false"}
    done = reactive("beat", "--once", "--client", "alpha", env=dead_redis, tmp_path=tmp_path)
    assert done.returncode == 3
    assert "cannot reach Redis" in one_error_line(done)  # no traceback: debug is off


def test_a_driver_message_on_several_lines_prints_as_one(tmp_path: Path) -> None:
    # psycopg says "connection ... failed: ...\n\tIs the server running on that host ...?"
    unreachable = {"DATABASE_URL": f"postgres://u@127.0.0.1:{free_port()}/x"}
    done = reactive("login-link", "alice", "--client", "alpha", env=unreachable, tmp_path=tmp_path)
    assert done.returncode == 3
    assert "Is the server running" in one_error_line(done)


@pytest.mark.parametrize("interval", ["inf", "nan", "5000"])
def test_beat_refuses_an_interval_that_is_no_schedule(interval: str, tmp_path: Path) -> None:
    done = reactive("beat", "--interval", interval, "--client", "alpha", env={}, tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr  # before: "ticking every inf s", one tick, then silence
    assert "--interval" in done.stderr


def test_tail_of_a_user_never_creates_an_empty_client_database(tmp_path: Path) -> None:
    done = reactive("tail", "--client", "alpha", "--user", "alice", env={}, tmp_path=tmp_path)
    assert done.returncode == 1
    assert "no client database at" in one_error_line(done)
    assert not (tmp_path / "var" / "client-alpha.sqlite3").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["status", "--client", "Alpha"],
        ["listen", "--client", "Alpha", "--once"],
        ["sync", "--client", "Alpha"],
    ],
    ids=lambda c: c[0],
)
def test_a_malformed_client_name_is_a_usage_error(command: list[str], tmp_path: Path) -> None:
    done = reactive(*command, env={}, tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "--client: invalid client name 'Alpha'" in one_error_line(done)


def test_a_client_command_without_a_client_says_how_to_name_one(tmp_path: Path) -> None:
    env = {"REACTIVE_CLIENT": ""}
    done = reactive("beat", "--once", env=env, tmp_path=tmp_path)
    assert done.returncode == 2
    assert "which client? pass --client NAME or set REACTIVE_CLIENT" in one_error_line(done)


def test_log_levels_are_the_ones_logging_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    from reactive import settings
    from reactive.errors import ConfigError

    for name in ("warn", "WARNING", "fatal", "debug"):
        monkeypatch.setenv("REACTIVE_LOG_LEVEL", name)
        assert settings.log_level() == name.upper()
    monkeypatch.setenv("REACTIVE_LOG_LEVEL", "verbose")
    with pytest.raises(ConfigError, match="REACTIVE_LOG_LEVEL must be one of"):
        settings.log_level()


def test_a_malformed_client_database_url_names_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from reactive import settings
    from reactive.errors import ConfigError

    monkeypatch.setenv("DATABASE_URL_ALPHA", "bogus-url")
    with pytest.raises(ConfigError, match="^DATABASE_URL_ALPHA cannot be read"):
        settings.django_database("client", "alpha")


def test_up_names_its_own_option_for_a_malformed_client(tmp_path: Path) -> None:
    done = reactive("up", "--clients", "alpha,Beta", "--json", env={}, tmp_path=tmp_path)
    assert done.returncode == 2
    assert "--clients: invalid client name 'Beta'" in one_error_line(done)
