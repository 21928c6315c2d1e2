"""What the sites' settings make of the environment: keys, cookies, HTTPS behind a proxy, logs, connections."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reactive import settings
from reactive.errors import ConfigError

GOOD_KEY = "q3J0cI3S2m3bqkzqg1oPp2r9kqH8y7s1T2uVwXyZ"


@pytest.mark.parametrize(
    "value", ["change-me-to-another-long-random-string", "replace-me-with-a-long-random-string", "short"]
)
@pytest.mark.parametrize(
    ("name", "read"), [("REACTIVE_SSO_KEY", settings.sso_key), ("DJANGO_SECRET_KEY", settings.secret_key)]
)
def test_with_debug_off_a_placeholder_or_short_key_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, read: object, value: str
) -> None:
    """The examples' placeholders are public: a link signed with one would sign anybody in."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name} is a placeholder or shorter than 32"):
        read(False)  # type: ignore[operator]
    assert read(True) == value  # type: ignore[operator]  # a development machine may use anything
    monkeypatch.setenv(name, GOOD_KEY)
    assert read(False) == GOOD_KEY  # type: ignore[operator]


def test_the_master_and_each_client_keep_cookies_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Browsers keep cookies per host, not per port: the sites of `reactive up` share 127.0.0.1."""
    monkeypatch.setenv("REACTIVE_PREFIX", "reactive")
    master, alpha, beta = (settings.web_settings(site) for site in ("master", "alpha", "beta"))
    assert master["SESSION_COOKIE_NAME"] == "reactive-master-session"
    assert alpha["SESSION_COOKIE_NAME"] == beta["SESSION_COOKIE_NAME"] == "sessionid"  # Django's, unless set
    assert len({s["CSRF_COOKIE_NAME"] for s in (master, alpha, beta)}) == 3
    assert "SECURE_PROXY_SSL_HEADER" not in master and master["CSRF_TRUSTED_ORIGINS"] == []


def test_a_session_cookie_name_from_the_environment_is_used_and_a_malformed_one_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DJANGO_SESSION_COOKIE_NAME", "alpha-session")
    assert settings.web_settings("alpha")["SESSION_COOKIE_NAME"] == "alpha-session"
    assert settings.web_settings("master")["SESSION_COOKIE_NAME"].endswith("-master-session")  # its own
    for malformed in ("alpha session", "alpha;beta", "a=b", "caf\u00e9"):
        monkeypatch.setenv("DJANGO_SESSION_COOKIE_NAME", malformed)
        with pytest.raises(ConfigError, match="DJANGO_SESSION_COOKIE_NAME .* is not a cookie name"):
            settings.web_settings("alpha")


def test_up_gives_each_client_a_session_cookie_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """`reactive up` runs every site on one host: one shared "sessionid" would let beta sign alpha out."""
    from reactive.up import site_env

    monkeypatch.setenv("REACTIVE_PREFIX", "demo")
    names = {client: site_env("client", client)["DJANGO_SESSION_COOKIE_NAME"] for client in ("alpha", "beta")}
    assert names == {"alpha": "demo-alpha-session", "beta": "demo-beta-session"}


KEYS = [
    ("REACTIVE_SSO_KEY", settings.sso_key, settings.DEV_SSO_KEY),
    ("DJANGO_SECRET_KEY", settings.secret_key, settings.DEV_SECRET_KEY),
]


@pytest.mark.parametrize(("name", "read", "development"), KEYS)
def test_the_development_keys_serve_this_machine_only_even_under_debug(
    monkeypatch: pytest.MonkeyPatch, name: str, read: object, development: str
) -> None:
    """The development keys are in this repository: with them anyone signs a login link (or a session) for
    any user. A site that answers to another host name than this machine's, DEBUG or not, refuses them."""
    monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
    assert read(True) == development  # type: ignore[operator]
    for hosts in ("alpha.example.com,localhost", "localhost,192.168.1.20"):
        monkeypatch.setenv("DJANGO_ALLOWED_HOSTS", hosts)
        with pytest.raises(ConfigError, match=f"{name} is not set, and DJANGO_ALLOWED_HOSTS serves"):
            read(True)  # type: ignore[operator]
        monkeypatch.setenv(name, development)  # named outright: the same key, refused the same way
        with pytest.raises(ConfigError, match=f"{name} is not set, and DJANGO_ALLOWED_HOSTS serves"):
            read(True)  # type: ignore[operator]
        monkeypatch.setenv(name, GOOD_KEY)
        assert read(True) == GOOD_KEY  # type: ignore[operator]
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("value", "debug"),
    [(None, True), ("", True), ("1", True), ("On", True), ("0", False), ("0 ", False), ("FALSE", False)],
)
def test_django_debug_reads_the_on_off_words_and_is_on_when_unset(
    monkeypatch: pytest.MonkeyPatch, value: str | None, debug: bool
) -> None:
    if value is None:
        monkeypatch.delenv("DJANGO_DEBUG", raising=False)
    else:
        monkeypatch.setenv("DJANGO_DEBUG", value)  # "0 " from a .env file with a trailing space: off
    assert settings.debug() is debug


@pytest.mark.parametrize("value", ["production", "n", "disabled"])
def test_a_django_debug_that_is_no_on_off_word_is_refused_not_taken_for_on(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DJANGO_DEBUG", value)
    with pytest.raises(ConfigError, match="DJANGO_DEBUG must be one of"):
        settings.debug()


def test_behind_a_tls_proxy_the_sites_trust_its_scheme_and_the_listed_origins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DJANGO_SECURE_PROXY", "1")
    monkeypatch.setenv("DJANGO_CSRF_TRUSTED_ORIGINS", "https://master.example.com, https://alpha.example.com")
    found = settings.web_settings("master")
    assert found["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert found["SESSION_COOKIE_SECURE"] and found["CSRF_COOKIE_SECURE"]
    assert found["CSRF_TRUSTED_ORIGINS"] == ["https://master.example.com", "https://alpha.example.com"]


@pytest.mark.parametrize(("debug", "warnings_shown"), [("0", False), ("1", True)])
def test_a_server_error_reaches_stderr_whatever_debug_says(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], debug: str, warnings_shown: bool
) -> None:
    """Django prints a 500's traceback itself only under DEBUG, and mails it to ADMINS, which we have none of."""
    import logging
    import logging.config

    monkeypatch.setenv("DJANGO_DEBUG", debug)
    names = ("reactive", "django.request")
    saved = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
        for n in names
    }
    try:
        logging.config.dictConfig(settings.logging_config())
        request_log = logging.getLogger("django.request")
        request_log.error("Internal Server Error: /boom")
        request_log.warning("Not Found: /nowhere")
    finally:
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
    err = capsys.readouterr().err
    assert "ERROR django.request: Internal Server Error: /boom" in err
    assert ("Not Found: /nowhere" in err) is warnings_shown


def test_web_processes_keep_no_database_connection_between_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ASGI persistent connections pile up (Django's docs): they filled PostgreSQL's 100 slots."""
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db.example:5432/{client}")
    assert settings.django_database("client", "alpha")["CONN_MAX_AGE"] == 0


def test_a_client_whose_own_database_is_not_named_where_the_others_are_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One Secret for every site: DATABASE_URL is the master's, DATABASE_URL_ALPHA alpha's. A new client
    gamma whose variable was forgotten (or misspelt) ran on the master's database, adopting the master's
    users as replicas and making their passwords unusable."""
    for name in [n for n in os.environ if n.startswith("DATABASE_URL")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", "postgres://db.example/master")
    monkeypatch.setenv("DATABASE_URL_ALPHA", "postgres://db.example/alpha")
    with pytest.raises(ConfigError, match="DATABASE_URL_GAMMA is not set while DATABASE_URL_ALPHA is"):
        settings.database_url("client", "gamma")
    assert settings.database_url("client", "alpha") == "postgres://db.example/alpha"
    assert settings.database_url("master") == "postgres://db.example/master"
    monkeypatch.setenv("DATABASE_URL_GAMMA", "postgres://db.example/gamma")
    assert settings.database_url("client", "gamma") == "postgres://db.example/gamma"
    monkeypatch.delenv("DATABASE_URL_GAMMA")
    monkeypatch.setenv("DATABASE_URL", "postgres://db.example/{client}")
    assert settings.database_url("client", "gamma") == "postgres://db.example/gamma"
    monkeypatch.delenv("DATABASE_URL_ALPHA")
    monkeypatch.setenv("DATABASE_URL", "postgres://db.example/gamma-own")  # a container of its own
    assert settings.database_url("client", "gamma") == "postgres://db.example/gamma-own"
    monkeypatch.setenv("DATABASE_URL_TEST", "postgres://db.example/test")  # no client's: CI, hosting
    assert settings.database_url("client", "gamma") == "postgres://db.example/gamma-own"


def test_a_var_folder_made_for_the_sqlite_files_is_this_users_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The master's SQLite file holds password hashes; the folder we make is 0700 whatever the umask. One
    that exists keeps its modes (its owner chose them)."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("REACTIVE_VAR_DIR", str(tmp_path / "var"))
    old = os.umask(0o022)
    try:
        settings.django_database("master")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    monkeypatch.setenv("REACTIVE_VAR_DIR", str(shared))
    settings.django_database("master")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_redis_urls_in_messages_keep_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """The beat's and tail's messages name the Redis they wait for: logs are read by more people than
    hold the password."""
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret@redis.example:6379/0")
    assert settings.shown_redis_url() == "redis://:***@redis.example:6379/0"
    monkeypatch.setenv("REDIS_URL", "redis://redis.example:6379/0")
    assert settings.shown_redis_url() == "redis://redis.example:6379/0"
    for query in ("db=1&password=s3cret", "ssl_password=s3cret", "sslpassword=s3cret", "pass%77ord=s3cret",
                  "password=s3#cret"):  # fmt: skip
        monkeypatch.setenv("REDIS_URL", f"redis://redis.example:6379/0?{query}")  # redis-py reads them
        shown = settings.shown_redis_url()
        assert "s3" not in shown and "cret" not in shown and "***" in shown, shown
    monkeypatch.setenv("REDIS_URL", "redis://redis.example:6379/0?db=1&password=s3cret")
    assert settings.shown_redis_url() == "redis://redis.example:6379/0?db=1&password=***"
    monkeypatch.setenv("REDIS_URL", "http://user:s3cret@x/0")
    with pytest.raises(ConfigError) as refused:
        settings.redis_url()
    assert "s3cret" not in str(refused.value)
