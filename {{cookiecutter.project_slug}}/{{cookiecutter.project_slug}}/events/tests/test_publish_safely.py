"""Publishing that a caller can retry (idempotency keys) and that follows its transaction, on
both brokers and a real database."""

import asyncio
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Permission, User
from django.db import transaction
from django.test import override_settings
from rest_framework.test import APIClient

from .. import apublish, publish, publish_on_commit  # the app's public API
from ..broker import get_broker
from ..exceptions import IdempotencyConflict


@pytest.fixture(params=["in-process", "redis"])
def broker(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each broker in turn, with a history of this test's own."""
    url = "" if request.param == "in-process" else request.getfixturevalue("redis_url")
    prefix = f"test-safely-{request.node.name}"
    with override_settings(REDIS_URL=url, EVENTS_REDIS_PREFIX=prefix, EVENTS_PUBLISH_RATE=""):
        yield


def stored_types() -> list[str]:
    """The types of the events in history, oldest first."""

    async def read() -> list[str]:
        return [
            event.type
            async for _, events in get_broker().history_after(0, None)
            for event in events
        ]

    return asyncio.run(read())


@pytest.mark.usefixtures("broker")
def test_a_retry_with_the_same_key_publishes_nothing_and_gets_the_first_id() -> None:
    first = publish("order.paid", {"order": 1}, key="pay-1")
    again = publish("order.paid", {"order": 1}, key="pay-1")
    other = asyncio.run(apublish("order.paid", {"order": 2}, key="pay-2"))
    assert again.id == first.id != other.id
    assert asyncio.run(apublish("order.paid", {"order": 1}, key="pay-1")).id == first.id
    with pytest.raises(IdempotencyConflict):
        publish("order.paid", {"order": 3}, key="pay-1")  # the key of another event
    assert stored_types().count("order.paid") == 2


@pytest.mark.django_db
@pytest.mark.usefixtures("broker")
def test_the_api_answers_a_retry_with_the_first_id_per_user_and_refuses_a_reused_key() -> None:
    publish_permission = Permission.objects.get(codename="publish_event")
    clients = []
    for name in ("one", "two"):
        user = User.objects.create_user(name)
        user.user_permissions.add(publish_permission)
        client = APIClient()
        client.force_authenticate(user)
        clients.append(client)
    one, two = clients
    body = {"type": "invoice", "data": {"n": 1}}
    first = one.post("/api/events/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    retry = one.post("/api/events/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json() == first.json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    # Another user's key of the same name is another key.
    theirs = two.post("/api/events/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert theirs.status_code == 201
    assert theirs.json() != first.json()
    reused = one.post(
        "/api/events/",
        {"type": "invoice", "data": {"n": 2}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-1",
    )
    assert reused.status_code == 422
    assert "another event" in reused.json()["detail"]
    for bad in ("", " leading-space", "é", "x" * 256):
        refused = one.post("/api/events/", body, format="json", HTTP_IDEMPOTENCY_KEY=bad)
        assert refused.status_code == 400, bad
    assert stored_types().count("invoice") == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("broker")
def test_publish_on_commit_publishes_after_the_commit_and_never_on_rollback() -> None:
    with transaction.atomic():
        User.objects.create_user("committed")
        publish_on_commit("user.created", {"name": "committed"})
        assert "user.created" not in stored_types()  # not before the commit
    assert stored_types().count("user.created") == 1

    def failing_transaction() -> None:
        with transaction.atomic():
            User.objects.create_user("rolled-back")
            publish_on_commit("user.rolled-back", {"name": "rolled-back"})
            raise RuntimeError("the transaction fails")

    with pytest.raises(RuntimeError):
        failing_transaction()
    assert "user.rolled-back" not in stored_types()
    assert not User.objects.filter(username="rolled-back").exists()
