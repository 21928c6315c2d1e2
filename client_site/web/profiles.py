"""The replica user as pages and sockets show it: the profile with its version, and lookups by master key."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from reactive import groups
from reactive.events import USER_MODEL
from reactive.replica import LEGACY_PREFIX, ReplicaState, privileged, profile_of


def current_profile(user: Any) -> dict[str, Any]:
    """The profile the listener would send for this user now; version 0 for a user that is no replica."""
    key, version = replica_versions([str(user.pk)]).get(str(user.pk), ("", 0))
    return profile_of(user, key, version)


def profile_by_pk(local_pk: Any) -> dict[str, Any] | None:
    user = get_user_model()._base_manager.filter(pk=local_pk).first()
    return None if user is None else current_profile(user)


CHUNK = 500  # users a query asks about: well under every database's limit on parameters


def replica_versions(local_pks: list[str]) -> dict[str, tuple[str, int]]:
    """(key, version) of each of these local users that replicates a master user, keyed as profiles carry
    it (the listener's carry the event's key: a legacy replica's is the bare username, without the state's
    prefix): one query per CHUNK users."""
    versions: dict[str, tuple[str, int]] = {}
    for start in range(0, len(local_pks), CHUNK):
        states = ReplicaState.objects.filter(
            model=USER_MODEL, deleted=False, local_pk__in=local_pks[start : start + CHUNK]
        ).values_list("local_pk", "key", "version")
        versions.update((pk, (key.removeprefix(LEGACY_PREFIX), int(version))) for pk, key, version in states)
    return versions


def ended_accounts(local_pks: list[str]) -> dict[str, str]:
    """Of these local users, those whose account ended, and how: groups.REMOVED (no row any more) or
    groups.DISABLED; one query per CHUNK users."""
    model = get_user_model()
    fields = ["pk", "is_active"] if any(f.name == "is_active" for f in model._meta.fields) else ["pk"]
    active: dict[str, bool] = {}
    for start in range(0, len(local_pks), CHUNK):
        # _base_manager: a default manager that hides inactive rows would make them look deleted
        rows = model._base_manager.filter(pk__in=local_pks[start : start + CHUNK]).values_list(*fields)
        active.update((str(row[0]), bool(row[-1]) if len(row) > 1 else True) for row in rows)
    return {
        user: groups.DISABLED if user in active else groups.REMOVED
        for user in local_pks
        if not active.get(user, False)
    }


def profiles_by_pk(local_pks: list[str]) -> dict[str, dict[str, Any]]:
    """The profiles of those of these local users that still exist: two queries per CHUNK users."""
    profiles: dict[str, dict[str, Any]] = {}
    for start in range(0, len(local_pks), CHUNK):
        chunk = local_pks[start : start + CHUNK]
        versions = replica_versions(chunk)
        for user in get_user_model()._base_manager.filter(pk__in=chunk):
            key, version = versions.get(str(user.pk), ("", 0))
            profiles[str(user.pk)] = profile_of(user, key, version)
    return profiles


def replica_user(master_key: str, username: str) -> Any | None:
    """The local user replicating master user ``master_key`` (legacy replicas are keyed by username).

    A legacy state answers only for a row that no other master key has since linked, and that still
    has this username: otherwise a link for one master user could sign in as another's row.
    """
    state = _live_state(master_key)
    if state is not None:  # never a superuser: replicas do not carry that flag, so it is a local account
        user = get_user_model()._default_manager.filter(pk=state.local_pk).first()
        return None if user is None or getattr(user, "is_superuser", False) else user
    legacy = _live_state(f"{LEGACY_PREFIX}{username}")
    if legacy is None:
        return None
    linked = ReplicaState.objects.filter(model=USER_MODEL, local_pk=legacy.local_pk, deleted=False)
    if linked.exclude(key__startswith=LEGACY_PREFIX).exclude(key=master_key).exists():
        return None
    user = get_user_model()._default_manager.filter(pk=legacy.local_pk, username=username).first()
    if user is not None and privileged(user):
        return None  # a link never signs in as a client's own staff account
    return user


def _live_state(key: str) -> ReplicaState | None:
    return (
        ReplicaState.objects.filter(model=USER_MODEL, key=key, deleted=False).exclude(local_pk=None).first()
    )
