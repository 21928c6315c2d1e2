"""Master changes (saves, queryset updates, bulk creates, deletes) reach both replicas.

Through the outbox, a real Celery worker, moto's SNS/SQS and listeners.
"""

from __future__ import annotations

import json

import pytest

from tests.support.services import eventually
from tests.support.sites import Deployment

pytestmark = pytest.mark.e2e

REPLICA_USERS = """
import json
from django.contrib.auth import get_user_model
print(json.dumps(sorted(get_user_model().objects.values_list("username", "first_name", "email"))))
"""


def replica(system: Deployment, client: str) -> list[list[str]]:
    return json.loads(system.python(client, REPLICA_USERS))


@pytest.fixture(params=["sqlite", "postgres"])
def system(request: pytest.FixtureRequest) -> Deployment:
    return request.getfixturevalue("deployment" if request.param == "sqlite" else "pg_deployment")


def test_changes_reach_both_clients_and_secrets_reach_neither(system: Deployment) -> None:
    deployment = system
    deployment.start_worker()
    for client in deployment.clients:
        deployment.start_listener(client, "--wait", "2")
    deployment.python(
        "master",
        """
        from django.contrib.auth import get_user_model
        U = get_user_model()
        a = U.objects.create_user("alice", "alice@example.com", "pw", first_name="Alice")
        b = U.objects.create_user("bob", "bob@example.com", "pw", first_name="Bob")
        c = U.objects.create_user("carol", "carol@example.com", "pw", first_name="Carol")
        d = U.objects.create_user("dave", "dave@example.com", "pw", first_name="Dave")
        a.first_name = "Alicia"; a.save()
        b.username = "robert"; b.save()
        c.delete()
        d.is_staff = True; d.save()
        """,
    )
    want = [["alice", "Alicia", "alice@example.com"], ["robert", "Bob", "bob@example.com"]]
    for client in deployment.clients:
        eventually(lambda c=client: replica(deployment, c) == want, timeout=60, what=f"{client} converges")

    deployment.python(
        "master",
        """
        from django.contrib.auth import get_user_model
        from django.utils import timezone
        from reactive.outbox import OutboxEvent
        U = get_user_model()
        before = OutboxEvent.objects.count()
        a = U.objects.get(username="alice")
        a.set_password("new-secret"); a.save()
        a.last_login = timezone.now(); a.save()
        assert OutboxEvent.objects.count() == before, "password/last_login wrote outbox rows"
        d = U.objects.get(username="dave")
        d.is_staff = False; d.first_name = "David"; d.save()
        """,
    )
    want = [*want[:1], ["dave", "David", "dave@example.com"], *want[1:]]
    for client in deployment.clients:
        eventually(
            lambda c=client: replica(deployment, c) == want, timeout=60, what=f"{client} gets dave back"
        )

    deployment.python(
        "master",
        """
        from django.contrib.auth import get_user_model
        U = get_user_model()
        U.objects.filter(username="robert").update(first_name="Rob")
        U.objects.filter(username="alice").update(is_staff=True)
        U.objects.bulk_create([U(username="erin", first_name="Erin", email="erin@example.com")])
        U.objects.filter(username="dave").delete()
        """,
    )
    want = [["erin", "Erin", "erin@example.com"], ["robert", "Rob", "bob@example.com"]]
    for client in deployment.clients:
        eventually(
            lambda c=client: replica(deployment, c) == want,
            timeout=60,
            what=f"{client} gets queryset changes",
        )
    for client in deployment.clients:
        unusable = deployment.python(
            client,
            """
            from django.contrib.auth import get_user_model
            print(all(not u.has_usable_password() for u in get_user_model().objects.all()))
            """,
        )
        assert unusable.strip() == "True", "a replica user has a usable password"
