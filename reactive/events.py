"""The event schema v1 (the wire format), its encoding, and decoding of every accepted body.

Accepted bodies: a raw v1 event, an SNS envelope (non-raw delivery) around a v1 event, and the
original prototype's legacy envelope ``{"user": {...}, "action": 0|1|2}`` keyed by username.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from reactive.errors import MessageError

SCHEMA_VERSION = 1
ACTIONS = ("insert", "update", "delete")
LEGACY_ACTIONS = {0: "insert", 1: "update", 2: "delete"}
MAX_BODY_BYTES = 256 * 1024
USER_MODEL = "auth.user"  # the wire name of the user model, whatever AUTH_USER_MODEL says
Action = Literal["insert", "update", "delete"]
KeyField = Literal["pk", "username"]


@dataclass(frozen=True)
class Event:
    """One change of one row on the master."""

    model: str
    action: Action
    key: str
    version: int
    data: Mapping[str, Any] = field(default_factory=dict)
    changed: tuple[str, ...] = ()
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # "pk" for v1 events (the master key); "username" for the legacy format.
    key_field: KeyField = "pk"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "event_id": self.event_id,
            "model": self.model,
            "action": self.action,
            "key": self.key,
            "version": self.version,
            "occurred_at": format_time(self.occurred_at),
            "data": dict(self.data),
            "changed": list(self.changed),
        }

    def message_attributes(self) -> dict[str, str]:
        """SNS/SQS message attributes so that a subscription can filter."""
        return {"model": self.model, "action": self.action}

    @property
    def dedup_id(self) -> str:
        return f"{self.key}:{self.version}"


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError) as exc:
        raise MessageError(f"bad timestamp {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def encode(event: Event) -> str:
    return json.dumps(event.to_dict(), separators=(",", ":"), sort_keys=True, default=str)


def decode(body: str | bytes, *, sent_timestamp: int | None = None) -> Event:
    """Decode any accepted body into an Event, or raise MessageError saying why not.

    ``sent_timestamp`` (SQS SentTimestamp, ms) orders legacy messages, which carry no version.
    """
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if len(body.encode("utf-8")) > MAX_BODY_BYTES:
        raise MessageError(f"body of {len(body)} characters is larger than {MAX_BODY_BYTES} bytes")
    payload = _load_object(body, "body")
    if payload.get("Type") == "Notification" and "Message" in payload:
        inner = _load_object(payload["Message"], "SNS Message")
        if "schema" in inner:
            return from_dict(inner)
        if "user" in inner:
            stamp = sent_timestamp or _envelope_timestamp(payload)
            return _from_legacy(inner, stamp, payload.get("MessageId"))
        raise MessageError("SNS envelope holds neither a v1 event nor a legacy message")
    if "user" in payload and "schema" not in payload:
        return _from_legacy(payload, sent_timestamp, None)
    return from_dict(payload)


def from_dict(payload: Mapping[str, Any]) -> Event:
    schema = payload.get("schema")
    if schema != SCHEMA_VERSION:
        raise MessageError(f"unsupported schema {schema!r} (this listener reads schema {SCHEMA_VERSION})")
    action = payload.get("action")
    if action not in ACTIONS:
        raise MessageError(f"unknown action {action!r}")
    model, key, version = payload.get("model"), payload.get("key"), payload.get("version")
    if not isinstance(model, str) or "." not in model:
        raise MessageError(f"bad model {model!r}")
    if not isinstance(key, str) or not key:
        raise MessageError(f"bad key {key!r}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise MessageError(f"bad version {version!r}")
    data = payload.get("data", {})
    changed = payload.get("changed", [])
    if not isinstance(data, dict) or not isinstance(changed, list):
        raise MessageError("data must be an object and changed a list")
    occurred = payload.get("occurred_at")
    return Event(
        model=model,
        action=cast(Action, action),
        key=key,
        version=version,
        data=data,
        changed=tuple(str(c) for c in changed),
        event_id=str(payload.get("event_id") or uuid.uuid4()),
        occurred_at=parse_time(occurred) if isinstance(occurred, str) else datetime.now(UTC),
    )


def _from_legacy(payload: Mapping[str, Any], stamp: int | None, message_id: str | None) -> Event:
    user, code = payload.get("user"), payload.get("action")
    if not isinstance(user, dict) or not isinstance(user.get("username"), str) or not user["username"]:
        raise MessageError("legacy message without user.username")
    if code not in LEGACY_ACTIONS:
        raise MessageError(f"unknown legacy action {code!r}")
    if stamp is None:
        raise MessageError("legacy message without a SentTimestamp to order it")
    data = {k: v for k, v in user.items() if k not in ("password", "last_login", "id", "pk")}
    return Event(
        model=USER_MODEL,
        action=cast(Action, LEGACY_ACTIONS[code]),
        key=user["username"],
        version=int(stamp),
        data=data,
        changed=tuple(data),
        event_id=message_id or str(uuid.uuid4()),
        occurred_at=datetime.fromtimestamp(int(stamp) / 1000, UTC),
        key_field="username",
    )


def _envelope_timestamp(envelope: Mapping[str, Any]) -> int | None:
    value = envelope.get("Timestamp")
    if not isinstance(value, str):
        return None
    return int(parse_time(value).timestamp() * 1000)


def _load_object(text: Any, what: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise MessageError(f"{what} is not a string")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MessageError(f"{what} is not JSON ({exc.msg} at {exc.pos})") from exc
    if not isinstance(value, dict):
        raise MessageError(f"{what} is JSON but not an object")
    return value
