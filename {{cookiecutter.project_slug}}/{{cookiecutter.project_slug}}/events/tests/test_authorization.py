"""Topic rules and the changes to users, groups and permissions that make open streams recheck."""

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import (
    AbstractBaseUser,
    AnonymousUser,
    Group,
    Permission,
    PermissionsMixin,
    User,
)
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from ..access import signals
from ..access.topics import default_topic_authorizer, denied_topics


def orders_for_permission_holders(user: AbstractBaseUser | AnonymousUser, topic: str) -> bool:
    """The example of docs/events.md: a topic for the holders of a permission."""
    if topic == "orders":
        # AbstractBaseUser has no permissions: those come with PermissionsMixin.
        return isinstance(user, PermissionsMixin | AnonymousUser) and user.has_perm(
            "events.publish_event"
        )
    return default_topic_authorizer(user, topic)


@pytest.mark.django_db
@override_settings(EVENTS_PUBLIC_TOPICS=["news", "scores.*"])
def test_the_default_rule_denies_unless_public_or_staff() -> None:
    user = User.objects.create_user("reader")
    staff = User.objects.create_user("admin", is_staff=True)
    topics = ["news", "scores.golf", "scoresheet", "sports", "staff.alerts"]
    assert denied_topics(user, topics) == ["scoresheet", "sports", "staff.alerts"]
    assert denied_topics(staff, topics) == ["scoresheet", "sports"]


@pytest.mark.django_db
@override_settings(
    EVENTS_PUBLIC_TOPICS=[],
    EVENTS_TOPIC_AUTHORIZER=f"{__name__}.orders_for_permission_holders",
)
def test_a_project_rule_named_in_the_setting_decides() -> None:
    user = User.objects.create_user("clerk")
    assert denied_topics(user, ["orders"]) == ["orders"]
    user.user_permissions.add(Permission.objects.get(codename="publish_event"))
    user = User.objects.get(pk=user.pk)  # permissions are cached on the instance
    assert denied_topics(user, ["orders", "elsewhere"]) == ["elsewhere"]


@pytest.fixture
def rechecked(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Callable[..., Any]
) -> Callable[[Callable[[], object]], set[str]]:
    """Runs a change; returns the users whose streams it made every process recheck."""

    def run(change: Callable[[], object]) -> set[str]:
        users: set[str] = set()
        monkeypatch.setattr(signals, "recheck_streams", lambda user, **_: users.add(str(user)))
        with django_capture_on_commit_callbacks(execute=True):
            change()
        return users

    return run


@pytest.mark.django_db
def test_permission_and_group_changes_recheck_exactly_the_users_they_touch(
    rechecked: Callable[[Callable[[], object]], set[str]],
) -> None:
    permission = Permission.objects.get(codename="publish_event")
    group = Group.objects.create(name="publishers")
    alice, bob, carol = (User.objects.create_user(name) for name in ("alice", "bob", "carol"))
    group.user_set.add(alice, bob)

    assert rechecked(lambda: carol.user_permissions.add(permission)) == {str(carol.pk)}
    assert rechecked(lambda: permission.user_set.clear()) == {str(carol.pk)}
    assert rechecked(lambda: group.permissions.add(permission)) == {str(alice.pk), str(bob.pk)}
    assert rechecked(lambda: permission.group_set.remove(group)) == {str(alice.pk), str(bob.pk)}
    assert rechecked(lambda: group.user_set.remove(bob)) == {str(bob.pk)}
    assert rechecked(lambda: alice.groups.clear()) == {str(alice.pk)}
    # Every login saves last_login: not a change of access.
    assert rechecked(lambda: alice.save(update_fields=["last_login"])) == set()
    assert rechecked(lambda: alice.save()) == {str(alice.pk)}


@override_settings(EVENTS_TOPIC_AUTHORIZER="nowhere.topic_rule")
def test_an_authorizer_that_cannot_be_imported_fails_the_startup_checks() -> None:
    with pytest.raises(SystemCheckError, match=r"events\.E002.*EVENTS_TOPIC_AUTHORIZER"):
        call_command("check")
