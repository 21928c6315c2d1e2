"""Login tokens never reach the client site's access log (client_site/web/redact.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from uvicorn.logging import AccessFormatter

from client_site.web.redact import REDACTED, RedactTokens, redact
from tests.support.services import eventually, free_port
from tests.support.web import status

SECRET = "eyJrIjoiNSJ9:1vXyZ:abcDEF-secret_part"
UVICORN_FORMAT = '%s - "%s %s HTTP/%s" %d'  # uvicorn's access line, args as its protocols pass them


def uvicorn_record(full_path: str) -> logging.LogRecord:
    return logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        UVICORN_FORMAT,
        ("127.0.0.1:50432", "GET", full_path, "1.1", 302),
        None,
    )


def test_the_site_puts_the_filter_on_uvicorns_access_logger_once() -> None:
    """WebConfig.ready() installed it (Django is set up for the tests); a second set-up adds no other."""
    from django.apps import apps

    apps.get_app_config("web").ready()
    filters = logging.getLogger("uvicorn.access").filters
    assert sum(isinstance(f, RedactTokens) for f in filters) == 1


def test_a_record_as_uvicorn_makes_it_has_its_token_redacted_and_the_rest_kept() -> None:
    record = uvicorn_record(f"/sso/login?next=%2Fclock%2F&token={SECRET}&lang=fr")
    assert logging.getLogger("uvicorn.access").filter(record)  # the logger's own filters: what ready() put
    line = record.getMessage()
    assert SECRET not in line
    assert (
        line == f'127.0.0.1:50432 - "GET /sso/login?next=%2Fclock%2F&token={REDACTED}&lang=fr HTTP/1.1" 302'
    )
    # uvicorn's formatter reads the args again (client, method, path, version, status): they are redacted.
    formatted = AccessFormatter(fmt="%(request_line)s %(status_code)s", use_colors=False).format(record)
    assert formatted == f"GET /sso/login?next=%2Fclock%2F&token={REDACTED}&lang=fr HTTP/1.1 302 Found"


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/", "/"),
        ("/clock/?a=1&b=2", "/clock/?a=1&b=2"),
        (f"/sso/login?token={SECRET}", f"/sso/login?token={REDACTED}"),
        (f"/sso/login?tok%65n={SECRET}", f"/sso/login?tok%65n={REDACTED}"),  # Django reads it as "token"
        (f"/sso/login?token={SECRET}&token=again", f"/sso/login?token={REDACTED}&token={REDACTED}"),
        (f"/sso/login?notatoken={SECRET}", f"/sso/login?notatoken={SECRET}"),
        ("/sso/login?token=", f"/sso/login?token={REDACTED}"),
        (f"GET /sso/login?token={SECRET} HTTP/1.1", f"GET /sso/login?token={REDACTED} HTTP/1.1"),  # runserver
    ],
)
def test_only_the_values_of_tokens_are_redacted(path: str, logged: str) -> None:
    assert redact(path) == logged


def test_a_record_without_a_query_is_left_alone() -> None:
    record = uvicorn_record("/health")
    before = record.args
    assert RedactTokens().filter(record)
    assert record.args is before


def test_uvicorn_serving_the_client_site_logs_the_link_without_its_token(tmp_path: Path) -> None:
    """Across the process boundary: uvicorn configures its loggers, then imports the site, whose ready()
    adds the filter; its access line must keep uvicorn's handler (a dictConfig would have removed it)."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "client_site.settings",
        "REACTIVE_CLIENT": "alpha",
        "REACTIVE_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'client-alpha.sqlite3'}",
    }
    argv = [sys.executable, "-m", "uvicorn", "client_site.asgi:application", "--host", "127.0.0.1"]
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [*argv, "--port", str(port)], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: status(f"{url}/live") == 200, timeout=30, what="the client site answers /live")
        link = f"{url}/sso/login?token={SECRET}&next=%2Fclock%2F"
        # Whatever the page answers (a refused link), the request line is logged all the same.
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(link, timeout=10).close()
        access = eventually(
            lambda: [line for line in log.read_text().splitlines() if '"GET /sso/login' in line],
            timeout=10,
            what="uvicorn logs the request",
        )
    finally:
        server.terminate()
        server.wait(15)
    assert SECRET not in log.read_text()
    assert f"/sso/login?token={REDACTED}&next=%2Fclock%2F" in access[0]
