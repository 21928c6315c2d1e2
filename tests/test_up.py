"""The parts of `reactive up` that need no processes: ports, the choice of AWS, the process table, free ports,
the live view's login links. The whole run is proven in tests/e2e/test_up.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from reactive.errors import UsageError
from reactive.up import UpOptions, port_free, process_specs, resolve_aws_mode


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


@pytest.mark.django_db
@pytest.mark.usefixtures("captured")
def test_the_live_view_offers_login_links_only_while_the_demo_user_can_use_them(tmp_path: Path) -> None:
    from django.contrib.auth import get_user_model

    from reactive.up import Up, UpEvent

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
