"""Sites served for real in end-to-end tests: uvicorn processes, health waits, sessions made inside a site."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass

from reactive.up import WS_OPTIONS
from tests.support.services import eventually, free_port
from tests.support.sites import VENV_BIN, Deployment

ASGI_APPS = {"master": "master_site.asgi:application"}
CLIENT_ASGI_APP = "client_site.asgi:application"


@dataclass
class Served:
    """One site under uvicorn on a fixed port (a restart reuses it, as a redeployed server would)."""

    system: Deployment
    site: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, **extra: str) -> Served:
        app = ASGI_APPS.get(self.site, CLIENT_ASGI_APP)
        argv = [
            str(VENV_BIN / "uvicorn"),
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-access-log",
            *WS_OPTIONS,
        ]
        self.process = self.system.start(self.site, argv, f"uvicorn-{self.site}", **extra)
        eventually(
            lambda: status(self.url + "/health") == 200, timeout=30, what=f"{self.site} answers /health"
        )
        return self

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(15)
        self.process = None


def serve(system: Deployment, site: str, **extra: str) -> Served:
    return Served(system, site, free_port()).start(**extra)


def status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def session_cookie(system: Deployment, site: str, username: str) -> str:
    """A Django session for ``username`` made inside the site (the value of the "sessionid" cookie)."""
    out = system.python(
        site,
        f"""
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from django.test import Client
        client = Client()
        client.force_login(get_user_model().objects.get(username={username!r}))
        print(client.cookies[settings.SESSION_COOKIE_NAME].value)
        """,
    )
    return out.strip().splitlines()[-1]


def replica_names(system: Deployment, client: str) -> dict[str, str]:
    """username -> first_name on a client."""
    out = system.python(
        client,
        """
        import json
        from django.contrib.auth import get_user_model
        print(json.dumps(dict(get_user_model().objects.values_list("username", "first_name"))))
        """,
    )
    return dict(json.loads(out.strip().splitlines()[-1]))


def set_first_name(system: Deployment, username: str, first_name: str) -> None:
    system.python(
        "master",
        f"""
        from django.contrib.auth import get_user_model
        user = get_user_model().objects.get(username={username!r})
        user.first_name = {first_name!r}
        user.save()
        """,
    )
