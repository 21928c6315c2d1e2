"""The event schema v1 (the wire format), its encoding, and decoding of every accepted body.

Accepted bodies: a raw v1 event, an SNS envelope (non-raw delivery) around a v1 event, and the
original prototype's legacy envelope ``{"user": {...}, "action": 0|1|2}`` keyed by username.
"""

from __future__ import annotations

import json
import re
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
MAX_VERSION = 2**63 - 1  # a signed 64-bit column holds it on every database
MAX_KEY_LENGTH = 255  # ReplicaState.key
MODEL_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")  # PostgreSQL refuses NUL in text; none belongs in a key
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
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (AttributeError, ValueError, OverflowError) as exc:  # OverflowError: 9999-12-31T23:59-14:00 in UTC
        raise MessageError(f"bad timestamp {value!r}") from exc


def encode(event: Event) -> str:
    return json.dumps(event.to_dict(), separators=(",", ":"), sort_keys=True, default=str)


def decode(body: str | bytes, *, sent_timestamp: int | None = None) -> Event:
    """Decode any accepted body into an Event, or raise MessageError saying why not.

    Legacy messages carry no version: the SNS envelope's Timestamp orders them, or where a body has no
    envelope, ``sent_timestamp`` (SQS SentTimestamp, ms).
    Whatever a body holds, the only error that leaves here is MessageError: a listener must never
    stop on a message it cannot read.
    """
    try:
        return _decode(body, sent_timestamp)
    except MessageError:
        raise
    except Exception as exc:  # noqa: BLE001 - nesting too deep for the parser, and whatever else a body can do
        raise MessageError(f"body cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from exc


def _decode(body: str | bytes, sent_timestamp: int | None) -> Event:
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
            # SNS stamped the envelope when the prototype published it; SQS's SentTimestamp is when this
            # copy entered the queue, which a replay from the DLQ makes later than newer changes.
            stamp = _envelope_timestamp(payload) or sent_timestamp
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
    if not isinstance(model, str) or not MODEL_LABEL.fullmatch(model):
        raise MessageError(f"bad model {_shown(model)}")
    key = _checked_key(key, "key")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= MAX_VERSION:
        raise MessageError(f"bad version {_shown(version)}")
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
    _checked_key(user["username"], "legacy username")
    if not isinstance(code, int) or isinstance(code, bool) or code not in LEGACY_ACTIONS:
        raise MessageError(f"unknown legacy action {_shown(code)}")
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


def _checked_key(key: Any, what: str) -> str:
    if not isinstance(key, str) or not key:
        raise MessageError(f"bad {what} {_shown(key)}")
    if len(key) > MAX_KEY_LENGTH - 10 or CONTROL_CHARACTERS.search(key):  # room for the legacy prefix
        raise MessageError(
            f"bad {what} {_shown(key)}: longer than {MAX_KEY_LENGTH - 10} or a control character"
        )
    return key


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _envelope_timestamp(envelope: Mapping[str, Any]) -> int | None:
    value = envelope.get("Timestamp")
    if not isinstance(value, str):
        return None
    try:
        return int(parse_time(value).timestamp() * 1000)
    except MessageError:
        return None  # the SQS SentTimestamp orders it then


ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _load_object(text: Any, what: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise MessageError(f"{what} is not a string")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MessageError(f"{what} is not JSON ({exc.msg} at {exc.pos})") from exc
    except RecursionError as exc:
        raise MessageError(f"{what} is JSON nested too deep to read") from exc
    if not isinstance(value, dict):
        raise MessageError(f"{what} is JSON but not an object")
    if ESCAPED_SURROGATE.search(text):  # rare: a pair (an emoji) is fine, a lone half is not
        _require_encodable(value, what)
    return value


def _require_encodable(value: dict[str, Any], what: str) -> None:
    """JSON may escape half of a UTF-16 pair ("\\ud800"), which decodes to a string no database, log or
    terminal can encode: refused here, with the message, instead of failing its whole batch later."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MessageError(f"{what} holds a lone surrogate escape, which is no text: {exc.reason}") from exc
