"""Django's own changes of access, sent to every process's open streams (``revocation.py``).

- logout, or a session deleted otherwise (by an admin, ``clearsessions``, a queryset's delete):
  the streams of that session (and of the tickets it issued);
- a deleted token: the streams of that token (and of its tickets);
- a password change, a deactivated or deleted user: the streams whose credential no longer holds;
- permissions or groups changed: the streams of a topic the authorizer now denies.

Connected once, when the app is ready (``apps.py``).
"""

import functools
from typing import Any

from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group
from django.contrib.auth.signals import user_logged_out
from django.contrib.sessions.models import Session
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.http import HttpRequest
from rest_framework.authtoken.models import Token

from .credentials import SESSION_ENDED, TOKEN_DELETED, fingerprint
from .revocation import recheck_streams

# A user save that touches only these fields cannot change anyone's access (every login saves).
_HARMLESS_USER_FIELDS = frozenset({"last_login"})


def connect_signals() -> None:
    user_model = get_user_model()
    user_logged_out.connect(_logged_out, dispatch_uid="events.revocation.logout")
    post_delete.connect(_session_deleted, sender=Session, dispatch_uid="events.revocation.session")
    post_delete.connect(_token_deleted, sender=Token, dispatch_uid="events.revocation.token")
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="events.revocation.user")
    post_delete.connect(_user_deleted, sender=user_model, dispatch_uid="events.revocation.gone")
    for relation, uid in (
        (user_model.groups, "groups"),
        (user_model.user_permissions, "permissions"),
        (Group.permissions, "group-permissions"),
    ):
        m2m_changed.connect(
            _relation_changed, sender=relation.through, dispatch_uid=f"events.revocation.{uid}"
        )


def _logged_out(sender: Any, request: HttpRequest, user: AbstractBaseUser | None, **_: Any) -> None:
    session_key = request.session.session_key  # sent before the session is flushed
    if user is not None and session_key:
        recheck_streams(user, credential=fingerprint(session_key), reason=SESSION_ENDED)


def _session_deleted(sender: Any, instance: Session, **_: Any) -> None:
    # A session of the database (Django's db and cached_db engines). One that ends without
    # logout leaves no other trace: the streams it opened would go on.
    user_pk = instance.get_decoded().get(SESSION_KEY)
    if user_pk is not None:
        recheck_streams(user_pk, credential=fingerprint(instance.session_key), reason=SESSION_ENDED)


def _token_deleted(sender: Any, instance: Token, **_: Any) -> None:
    recheck_streams(instance.user_id, credential=fingerprint(instance.key), reason=TOKEN_DELETED)


def _user_saved(
    sender: Any, instance: AbstractBaseUser, created: bool, update_fields: Any, **_: Any
) -> None:
    if created or (update_fields and set(update_fields) <= _HARMLESS_USER_FIELDS):
        return
    # After the commit: a recheck that ran earlier would read the old password or flags.
    pk = instance.pk
    transaction.on_commit(lambda: recheck_streams(pk))


def _user_deleted(sender: Any, instance: AbstractBaseUser, **_: Any) -> None:
    pk = instance.pk
    transaction.on_commit(lambda: recheck_streams(pk))


def _relation_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[Any] | None, **_: Any
) -> None:
    # Before a clear, not after: only then are the related rows still there to be found.
    if action not in {"post_add", "post_remove", "pre_clear"}:
        return
    for pk in _affected_users(sender, instance, reverse, pk_set):
        transaction.on_commit(functools.partial(recheck_streams, pk))


def _affected_users(sender: Any, instance: Any, reverse: bool, pk_set: set[Any] | None) -> set[Any]:
    """The users whose groups or permissions an m2m change touched (pk_set is None: a clear)."""
    users = get_user_model()._default_manager
    if sender is Group.permissions.through:
        if not reverse:  # group.permissions.add(...)
            groups: Any = [instance.pk]
        else:  # permission.group_set.add(...)
            groups = pk_set if pk_set is not None else instance.group_set.values("pk")
        return set(users.filter(groups__in=groups).values_list("pk", flat=True))
    if not reverse:  # user.groups.add(...), user.user_permissions.add(...)
        return {instance.pk}
    if pk_set is not None:  # group.user_set.add(...), permission.user_set.add(...)
        return set(pk_set)
    if isinstance(instance, Group):
        return set(users.filter(groups=instance).values_list("pk", flat=True))
    return set(users.filter(user_permissions=instance).values_list("pk", flat=True))
