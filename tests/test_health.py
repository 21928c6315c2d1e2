"""/health: 200 or 503 naming what failed, without telling the public more than the failure's type."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("debug", "shown"), [(False, "ConnectionError"), (True, "ConnectionError: Error 111")]
)
def test_a_failed_service_is_named_and_its_details_stay_in_the_log(
    monkeypatch: pytest.MonkeyPatch,
    settings: object,
    caplog: pytest.LogCaptureFixture,
    debug: bool,
    shown: str,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://secret-user:secret-pass@127.0.0.1:1/0")
    settings.DEBUG = debug  # type: ignore[attr-defined]
    response = Client().get("/health")
    assert response.status_code == 503
    failed = response.json()["failed"]
    assert list(failed) == ["redis"] and failed["redis"].startswith(shown)
    if not debug:
        assert failed["redis"] == shown
    assert "redis unavailable: ConnectionError" in caplog.text
    assert not [
        r for r in caplog.records if r.name == "django.request"
    ]  # a probe's 503 is logged once, above
