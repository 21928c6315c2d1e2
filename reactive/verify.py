"""Verify: compare the master and one client's replica by key, version and content.

Mechanism: the operator's process opens both databases by URL, side by side, as two extra Django
database aliases (``--master-db`` / ``--client-db``, defaulting to what reactive.settings.database_url
gives for the master and for that client). It runs with the master's settings, so "which users are
synced and which fields" is the master's own definition (its registered capture). Why not digests
exported on each side: that needs a process on each side, a file carried between them, and two reads
at different moments; an operator who can run `sync` and reach a client's database gets one command
and one comparison, and ``compare`` is pure, so a digest mode can feed it later without changing it.

What counts: a master user is expected on the replica when the master syncs it; its version is the
newest outbox row for its key that went to every client or to this one (unknown once pruned). The
replica's rows are its live ReplicaState entries (tombstones are not rows) with their local users.
  missing: the master has it, the replica does not;
  extra:   the replica has it, the master does not (deleted, or no longer synced);
  stale:   the replica's version is older than the master's, or a field differs.
Differences found during live traffic can be events in flight: run it again, or `reactive sync`.

And one that no sync mends: versions are the master's outbox ids, so a master database restored from a
backup hands out ids the replica has already seen, and every change (a sync's too) is skipped as stale.
A replica whose highest version is above the last id the master's outbox sequence issued says so
(``sequence_behind``), with the remedy (docs/operations.md, *Restoring the master's database*).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from django.db import DatabaseError, connections, transaction
from django.db.models import Max

from reactive import capture, settings
from reactive.errors import ConfigError, ReactiveError, ServiceUnavailable, UsageError
from reactive.outbox import TOPIC, OutboxEvent
from reactive.resync import advance_key, last_issued_key, tracking
from reactive.settings import redact

MASTER_ALIAS = "reactive_verify_master"
REPLICA_ALIAS = "reactive_verify_replica"
Kind = Literal["missing", "extra", "stale"]
T = TypeVar("T")


@dataclass(frozen=True)
class Row:
    key: str
    version: int | None  # None: unknown (the master's outbox rows for it were pruned)
    data: Mapping[str, Any] | None  # None: the replica's state row points at no local user

    @property
    def username(self) -> str:
        return str((self.data or {}).get("username", ""))


@dataclass(frozen=True)
class Difference:
    kind: Kind
    key: str
    username: str
    master_version: int | None
    replica_version: int | None
    detail: str


@dataclass
class VerifyReport:
    client: str
    master_rows: int
    replica_rows: int
    fields: list[str]
    differences: list[Difference] = field(default_factory=list)
    replica_top_version: int = 0  # the highest version the replica holds (tombstones too)
    outbox_sequence: int | None = None  # the last id the master's outbox issued (None: cannot say)
    advanced_to: int | None = None  # where --advance-sequence moved that sequence (None: it did not)

    @property
    def sequence_behind(self) -> bool:
        """The replica holds versions the master has not issued yet: a restored master database."""
        return self.outbox_sequence is not None and self.replica_top_version > self.outbox_sequence

    @property
    def ok(self) -> bool:
        return not self.differences and not self.sequence_behind

    def count(self, kind: Kind) -> int:
        return sum(1 for d in self.differences if d.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            ok=self.ok,
            missing=self.count("missing"),
            extra=self.count("extra"),
            stale=self.count("stale"),
            sequence_behind=self.sequence_behind,
        )
        return data


def compare(master: Mapping[str, Row], replica: Mapping[str, Row], fields: list[str]) -> list[Difference]:
    """Missing, extra and stale rows, ordered by key."""
    found: list[Difference] = []
    for key in sorted(set(master) | set(replica), key=_key_order):
        mine, theirs = master.get(key), replica.get(key)
        if theirs is None or (mine is not None and theirs.data is None):
            assert mine is not None
            detail = "no replica row" if theirs is None else "replica state points at a deleted local user"
            found.append(Difference("missing", key, mine.username, mine.version, None, detail))
        elif mine is None:
            detail = "the master does not have it (deleted, or no longer synced)"
            found.append(Difference("extra", key, theirs.username, None, theirs.version, detail))
        else:
            detail = _staleness(mine, theirs, fields)
            if detail:
                found.append(Difference("stale", key, mine.username, mine.version, theirs.version, detail))
    return found


def _staleness(mine: Row, theirs: Row, fields: list[str]) -> str:
    reasons = []
    if mine.version is not None and (theirs.version or 0) < mine.version:
        reasons.append(f"version {theirs.version} < {mine.version}")
    master_data, replica_data = mine.data or {}, theirs.data or {}
    for name in fields:
        if master_data.get(name) != replica_data.get(name):
            reasons.append(f"{name}: {replica_data.get(name)!r} != {master_data.get(name)!r}")
    return "; ".join(reasons)


def _key_order(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if key.isdigit() else (1, key)


# -- reading each side -------------------------------------------------------------------------------
def master_rows(client: str, using: str) -> dict[str, Row]:
    spec = tracking()
    versions = dict(
        OutboxEvent.objects.using(using)
        .filter(model=spec.label, target__in=[TOPIC, client])
        .values("key")
        .annotate(version=Max("id"))
        .values_list("key", "version")
    )
    rows: dict[str, Row] = {}
    for user in spec.model._default_manager.using(using).order_by("pk").iterator():
        if spec.predicate(user):
            key = str(user.pk)
            rows[key] = Row(key, versions.get(key), capture.serialize(capture.snapshot(user, spec)))
    return rows


def replica_rows(using: str, fields: list[str]) -> dict[str, Row]:
    from reactive.replica import LEGACY_PREFIX, ReplicaState

    spec = tracking()
    states = list(
        ReplicaState.objects.using(using)
        .filter(model=spec.label, deleted=False)
        .exclude(key__startswith=LEGACY_PREFIX)  # legacy rows are keyed by username, not by master key
        .values_list("key", "version", "local_pk")
    )
    local_pks = [pk for _, _, pk in states if pk]
    users = {str(u.pk): u for u in spec.model._default_manager.using(using).filter(pk__in=local_pks)}
    rows: dict[str, Row] = {}
    for key, version, local_pk in states:
        user = users.get(str(local_pk))
        data = None if user is None else capture.serialize({name: getattr(user, name) for name in fields})
        rows[key] = Row(key, int(version), data)
    return rows


def highest_replica_version(using: str) -> int:
    """The highest master version the replica holds, tombstones included (legacy rows carry SQS times)."""
    from reactive.replica import LEGACY_PREFIX, ReplicaState

    states = ReplicaState.objects.using(using).filter(model=tracking().label)
    top = states.exclude(key__startswith=LEGACY_PREFIX).aggregate(top=Max("version"))["top"]
    return int(top or 0)


def verify(client: str, master_url: str, client_url: str, advance_sequence: bool = False) -> VerifyReport:
    """Compare the master's database and a client's (both opened here by URL). With ``advance_sequence``,
    a master outbox sequence behind the replica's versions (a restored database) is moved past them."""
    settings.validate_client(client)
    if master_url == client_url:
        raise UsageError(
            f"the master and client {client} databases are the same ({redact(master_url)}): "
            f"pass --client-db, or set {settings.client_database_variable(client)}"
        )
    fields = list(tracking().fields)
    sides = {MASTER_ALIAS: ("master", master_url), REPLICA_ALIAS: (f"client {client}", client_url)}
    with databases(sides):
        for alias, (side, url) in sides.items():
            _connect(side, url, alias)
        master = _read("master", master_url, lambda: master_rows(client, MASTER_ALIAS), MASTER_ALIAS)
        replica = _read(
            f"client {client}", client_url, lambda: replica_rows(REPLICA_ALIAS, fields), REPLICA_ALIAS
        )
        sequence = _read(
            "master", master_url, lambda: last_issued_key(OutboxEvent, MASTER_ALIAS), MASTER_ALIAS
        )
        top = _read(
            f"client {client}", client_url, lambda: highest_replica_version(REPLICA_ALIAS), REPLICA_ALIAS
        )
        advanced = None
        if advance_sequence and sequence is not None and top > sequence:
            sequence = advanced = _read(
                "master", master_url, lambda: advance_key(OutboxEvent, MASTER_ALIAS, top), MASTER_ALIAS
            )
    report = VerifyReport(client, len(master), len(replica), fields, compare(master, replica, fields))
    report.replica_top_version, report.outbox_sequence, report.advanced_to = top, sequence, advanced
    return report


def _connect(side: str, url: str, alias: str) -> None:
    try:
        connections[alias].ensure_connection()
    except DatabaseError as exc:
        raise ServiceUnavailable(
            f"cannot reach the {side} database ({redact(url)}): {_one_line(exc)}"
        ) from exc


def _read(side: str, url: str, read: Callable[[], T], alias: str) -> T:
    try:
        with transaction.atomic(using=alias):
            return read()
    except DatabaseError as exc:
        raise ReactiveError(
            f"cannot read the {side} database ({redact(url)}): {_one_line(exc)} (migrated? the right URL?)"
        ) from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def databases(urls: Mapping[str, tuple[str, str]]) -> Iterator[None]:
    """Extra database aliases for the duration (alias -> (what it is, URL))."""
    for alias, (side, url) in urls.items():
        connections.settings[alias] = connection_settings(side, url)
    try:
        yield
    finally:
        for alias in urls:
            connections[alias].close()
            del connections[alias]
            connections.settings.pop(alias, None)


def connection_settings(side: str, url: str) -> dict[str, Any]:
    import dj_database_url

    try:
        config: dict[str, Any] = dict(dj_database_url.parse(url))
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"the {side} database URL {redact(url)!r} cannot be read: {exc}") from exc
    if config["ENGINE"].endswith("sqlite3"):
        if not Path(config["NAME"]).exists():  # never create an empty database just to compare with it
            raise ConfigError(f"no {side} database at {config['NAME']}")
        config["OPTIONS"] = {"timeout": 20}
    return dict(connections.configure_settings({"default": config})["default"])
