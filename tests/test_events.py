from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from reactive.errors import MessageError
from reactive.events import Event, decode, encode


def sample(**overrides: object) -> Event:
    values: dict = {
        "model": "auth.user",
        "action": "update",
        "key": "7",
        "version": 42,
        "data": {"first_name": "A"},
    }
    values.update(overrides)
    return Event(**values, changed=("first_name",))


def test_encode_matches_the_v1_wire_format() -> None:
    event = sample(occurred_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    payload = json.loads(encode(event))
    assert payload == {
        "schema": 1,
        "event_id": event.event_id,
        "model": "auth.user",
        "action": "update",
        "key": "7",
        "version": 42,
        "occurred_at": "2026-01-02T03:04:05Z",
        "data": {"first_name": "A"},
        "changed": ["first_name"],
    }
    assert event.message_attributes() == {"model": "auth.user", "action": "update"}


def test_decode_round_trips_raw_and_sns_envelope() -> None:
    event = sample()
    assert decode(encode(event)) == event
    envelope = {
        "Type": "Notification",
        "MessageId": "m1",
        "Message": encode(event),
        "Timestamp": "2026-01-01T00:00:00Z",
    }
    assert decode(json.dumps(envelope)) == event


def test_legacy_envelope_is_keyed_by_username_and_ordered_by_sent_timestamp() -> None:
    inner = {
        "user": {"username": "alice", "first_name": "Alice", "password": "x", "last_login": "y"},
        "action": 1,
    }
    envelope = {"Type": "Notification", "MessageId": "m1", "Message": json.dumps(inner)}
    event = decode(json.dumps(envelope), sent_timestamp=1_700_000_000_123)
    assert (event.action, event.key, event.key_field, event.version) == (
        "update",
        "alice",
        "username",
        1_700_000_000_123,
    )
    assert event.data == {"username": "alice", "first_name": "Alice"}


def v1(**fields: str) -> str:
    """A v1 body with these fields, each given as JSON text, in place of good ones."""
    body = {
        "schema": "1",
        "action": '"update"',
        "model": '"auth.user"',
        "key": '"1"',
        "version": "1",
        **fields,
    }
    return "{" + ", ".join(f'"{name}": {value}' for name, value in body.items()) + "}"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json at all", "not JSON"),
        ("[1, 2]", "not an object"),
        ('{"schema": 99}', "unsupported schema"),
        (
            '{"schema": 1, "action": "explode", "model": "auth.user", "key": "1", "version": 1}',
            "unknown action",
        ),
        ('{"schema": 1, "action": "update", "model": "auth.user", "key": "", "version": 1}', "bad key"),
        (
            '{"schema": 1, "action": "update", "model": "auth.user", "key": "1", "version": "2"}',
            "bad version",
        ),
        (
            '{"Type": "Notification", "Message": "{\\"user\\": {\\"username\\": \\"a\\"}, \\"action\\": 7}"}',
            "legacy",
        ),
        ("x" * 300_000, "larger than"),
        ("[" * 100_000 + "]" * 100_000, "nested too deep"),
        ('{"user": {"username": "a"}, "action": []}', r"unknown legacy action \[\]"),
        ('{"user": {"username": "a\\u0000b"}, "action": 1}', "bad legacy username"),
        (v1(version=str(10**20)), "bad version"),
        (v1(key='"7\\u0000"'), "control character"),
        (v1(key='"' + "k" * 300 + '"'), "longer than"),
        (v1(model='"auth.user\\u0000"'), "bad model"),
        (v1(occurred_at='"9999-12-31T23:59:59-14:00"'), "bad timestamp"),
        (v1(version="1" * 5000), r"body cannot be read \(ValueError"),  # past Python's digit limit
        (v1(key='"\\ud800"'), "lone surrogate"),  # half of a UTF-16 pair: no database stores it
        (v1(data='{"username": "a\\udc80"}'), "lone surrogate"),
        ('{"user": {"username": "\\udc80x"}, "action": 0}', "lone surrogate"),
        (
            '{"Type": "Notification", "Message": "{\\"user\\": {\\"username\\": \\"\\\\udc80\\"}}"}',
            "lone surrogate",
        ),
    ],
)
def test_bad_bodies_say_why(body: str, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        decode(body, sent_timestamp=1)


def test_a_replayed_legacy_envelope_keeps_its_place_by_the_time_sns_published_it() -> None:
    """A replay from the DLQ gives the copy a new SentTimestamp, later than changes made since."""
    inner = {"user": {"username": "alice", "first_name": "Old"}, "action": 1}
    envelope = {
        "Type": "Notification",
        "MessageId": "m1",
        "Message": json.dumps(inner),
        "Timestamp": "2023-11-14T22:13:20.123Z",
    }
    replayed = decode(json.dumps(envelope), sent_timestamp=1_800_000_000_000)
    assert replayed.version == 1_700_000_000_123


def test_a_legacy_envelope_with_a_bad_timestamp_falls_back_to_sent_timestamp() -> None:
    inner = {"user": {"username": "alice"}, "action": 1}
    envelope = {"Type": "Notification", "Message": json.dumps(inner), "Timestamp": "yesterday"}
    assert decode(json.dumps(envelope), sent_timestamp=1_700_000_000_123).version == 1_700_000_000_123
