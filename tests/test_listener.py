"""The receive loop on the in-memory transport: batch apply, ack after commit, poison left for the DLQ."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth import get_user_model

from reactive.events import Event, encode
from reactive.listener import Listener
from reactive.transport.base import OutgoingMessage
from tests.support.heartbeats import aged, fresh

pytestmark = pytest.mark.django_db
User = get_user_model()


def message(body: str, n: int) -> OutgoingMessage:
    return OutgoingMessage(id=str(n), body=body)


def event_body(action: str, key: str, version: int, **data: object) -> str:
    return encode(Event(model="auth.user", action=action, key=key, version=version, data=data))  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def __call__(self, changes) -> None:  # type: ignore[no-untyped-def]
        self.sent.extend((pk, dict(p)) for pk, p in changes)


def make_listener(memory, notify=None) -> Listener:  # type: ignore[no-untyped-def]
    return Listener("alpha", memory, wait=0, notify=notify or Recorder())


def test_a_batch_applies_acks_and_notifies_after_commit(memory) -> None:  # type: ignore[no-untyped-def]
    recorder = Recorder()
    listener = make_listener(memory, recorder)
    bodies = [
        event_body("insert", "1", 1, username="alice", first_name="Alice"),
        event_body("update", "1", 2, first_name="Al"),
    ]
    memory.publish([message(b, i) for i, b in enumerate(bodies)])
    totals = listener.run(once=True)
    assert (totals.received, totals.applied, totals.acked, totals.failed) == (2, 2, 2, 0)
    assert User.objects.get(username="alice").first_name == "Al"
    assert memory.depth(listener.queue).visible + memory.depth(listener.queue).in_flight == 0
    local_pk = str(User.objects.get(username="alice").pk)
    assert [p["first_name"] for pk, p in recorder.sent if pk == local_pk] == ["Alice", "Al"]


def test_poison_is_left_for_the_dlq_while_good_messages_apply(memory) -> None:  # type: ignore[no-untyped-def]
    listener = make_listener(memory)
    bodies = [
        "not json at all",
        event_body("insert", "1", 1, username="alice"),
        '{"schema": 1, "action": "explode", "model": "auth.user", "key": "1", "version": 1}',
        '{"schema": 99}',
        "x" * 210_000,
        event_body("insert", "2", 2, username="bob"),
        "[" * 100_000 + "]" * 100_000,  # deeper than the JSON parser goes
        '{"user": {"username": "a"}, "action": []}',
        event_body("insert", "3", 10**20, username="carol"),  # more than a 64-bit version column holds
        event_body("insert", "4\u0000", 4, username="dave"),  # PostgreSQL refuses NUL in text
    ]
    year_9999 = event_body("insert", "5", 5, username="erin", date_joined="9999-12-31T23:59:59-14:00")
    for i, body in enumerate([*bodies, year_9999]):  # one a call: together they pass SNS's 256 KiB
        memory.publish([message(body, i)])
    # Hidden 30 s, not the fixture's 0.2: a pause between the two receives must not bring the first back.
    first = listener.process(memory.receive(listener.queue, wait_seconds=0, visibility_timeout=30))
    second = listener.process(memory.receive(listener.queue, wait_seconds=0, visibility_timeout=30))
    assert (first.applied, first.failed, first.acked) == (2, 8, 2)
    assert (second.applied, second.failed, second.acked) == (0, 1, 0)
    assert sorted(User.objects.values_list("username", flat=True)) == ["alice", "bob"]
    # After max receives (2 here) the redrive moves every bad message to the DLQ.
    for _ in range(3):
        memory.release(listener.queue, [m.receipt for m in memory._queue(listener.queue).messages])
        while listener.process(memory.receive(listener.queue, wait_seconds=0)).received:
            pass
    assert memory.depth(f"{listener.queue}-dlq").visible == 9
    assert memory.depth(listener.queue).visible + memory.depth(listener.queue).in_flight == 0


def test_redelivery_twice_and_in_reverse_order_converges(memory) -> None:  # type: ignore[no-untyped-def]
    listener = make_listener(memory)
    bodies = [
        event_body("insert", "1", 1, username="carol", first_name="Carol"),
        event_body("update", "1", 2, first_name="Caroline"),
        event_body("update", "1", 3, username="caro"),
        event_body("insert", "2", 4, username="dan"),
        event_body("delete", "2", 5),
    ]
    for batch in (list(reversed(bodies)), bodies, bodies[::2]):
        memory.publish([message(b, i) for i, b in enumerate(batch)])
        listener.run(once=True)
    assert sorted(User.objects.values_list("username", "first_name")) == [("caro", "Caroline")]


def test_a_channel_layer_that_is_down_never_blocks_sync(memory, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    class DownLayer:
        async def group_send(self, group: str, message: dict) -> None:
            raise ConnectionError("Redis is down")

    monkeypatch.setattr("reactive.groups.layer", lambda: DownLayer())
    listener = Listener("alpha", memory, wait=0)  # the real notifier
    memory.publish([message(event_body("insert", "1", 1, username="erin"), 0)])
    assert listener.run(once=True).acked == 1
    assert User.objects.filter(username="erin").exists()
    assert "could not notify group" in caplog.text


def test_stop_requested_mid_loop_finishes_and_returns(memory) -> None:  # type: ignore[no-untyped-def]
    listener = make_listener(memory)
    memory.publish([message(event_body("insert", "1", 1, username="fay"), 0)])
    listener.stop()
    assert listener.run().received == 0


class CountedDeletes:
    """The in-memory transport with queues that hide a message 30 s (as provisioned), counting deletes."""

    def __init__(self, prefix: str) -> None:
        from reactive.transport.memory import MemoryTransport

        self.transport = MemoryTransport()
        self.queue = f"{prefix}-alpha"
        self.transport.create_queue(self.queue, visibility_timeout=30)
        self.transport.subscribe(self.queue)
        self.deletes: list[int] = []
        delete = self.transport.delete

        def counted(queue: str, receipts):  # type: ignore[no-untyped-def]
            self.deletes.append(len(receipts))
            return delete(queue, receipts)

        self.transport.delete = counted  # type: ignore[method-assign]

    def publish(self, count: int, start: int = 0) -> None:
        bodies = [event_body("insert", str(k), k + 1, username=f"u{k}") for k in range(start, start + count)]
        for offset in range(0, count, 10):
            self.transport.publish([message(b, i) for i, b in enumerate(bodies[offset : offset + 10])])

    def left(self) -> int:
        depth = self.transport.depth(self.queue)
        return depth.visible + depth.in_flight


def test_acks_wait_to_fill_one_delete_batch_and_go_when_the_listener_stops(monkeypatch, prefix) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REACTIVE_PREFIX", prefix)
    queues = CountedDeletes(prefix)
    queues.publish(4)
    listener = Listener("alpha", queues.transport, batch=2, wait=0, notify=Recorder(), ack_linger=5)
    totals = listener.run(once=True)
    assert (totals.received, totals.applied, totals.acked) == (4, 4, 4)
    assert queues.deletes == [4]  # two receives of two, one delete (it was one delete per receive)
    assert queues.left() == 0


def test_ten_pending_acks_go_at_once(monkeypatch, prefix) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REACTIVE_PREFIX", prefix)
    queues = CountedDeletes(prefix)
    queues.publish(12)
    listener = Listener("alpha", queues.transport, batch=5, wait=0, notify=Recorder(), ack_linger=5)
    assert listener.run(once=True).acked == 12
    assert queues.deletes == [10, 2]


def test_a_lingering_ack_does_not_wait_for_a_long_poll(monkeypatch, prefix) -> None:  # type: ignore[no-untyped-def]
    import contextlib
    import threading
    import time

    from tests.support.services import eventually

    monkeypatch.setenv("REACTIVE_PREFIX", prefix)
    queues = CountedDeletes(prefix)
    listener = Listener("alpha", queues.transport, wait=20, notify=Recorder(), ack_linger=1.5)
    queues.publish(1)
    acked_after: list[float] = []
    started = time.monotonic()

    def watch() -> None:  # another thread, with no database work: the listener runs in the test's
        try:
            with contextlib.suppress(AssertionError):  # not acked in time: acked_after says how late
                eventually(lambda: not queues.left(), timeout=10, interval=0.05, what="the ack")
            acked_after.append(time.monotonic() - started)
        finally:
            listener.stop()
            queues.publish(1, start=1)  # ends the long poll; that message is acked on the way out

    watcher = threading.Thread(target=watch)
    watcher.start()
    totals = listener.run()
    watcher.join()
    assert acked_after[0] < 5, "the ack waited for the long poll"
    assert queues.deletes == [1, 1] and totals.acked == 2 and queues.left() == 0


def test_acks_never_linger_near_the_visibility_timeout(memory) -> None:  # type: ignore[no-untyped-def]
    """The usual fixture hides a message 0.2 s: a linger would let it come back, so acks go at once."""
    listener = Listener("alpha", memory, wait=0, notify=Recorder(), ack_linger=5)
    listener.run(once=True)  # learns the queue's visibility timeout
    memory.publish([message(event_body("insert", "1", 1, username="alice"), 0)])
    assert listener.process(memory.receive(listener.queue, wait_seconds=0)).acked == 1  # not kept for later


def test_once_fails_when_the_database_is_down_instead_of_reporting_a_drain(memory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from django.db import OperationalError

    import reactive.listener

    def database_down(events, using):  # type: ignore[no-untyped-def]
        raise OperationalError("connection refused")

    listener = make_listener(memory)
    memory.publish([message(event_body("insert", "1", 1, username="alice"), 0)])
    monkeypatch.setattr(reactive.listener, "apply_batch", database_down)
    with pytest.raises(OperationalError):
        listener.run(once=True)
    depth = memory.depth(listener.queue)
    assert depth.visible + depth.in_flight == 1  # not applied, not deleted: it comes back


# -- liveness: the heartbeat file goes on while the loop does, and only then --------------------------------
def test_the_heartbeat_is_touched_every_long_poll(memory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The file REACTIVE_HEARTBEAT_FILE names (the one the probe reads) stays fresh while the loop polls."""
    import threading

    from tests.support.services import eventually

    monkeypatch.setenv("REACTIVE_HEARTBEAT_FILE", str(tmp_path / "{client}.alive"))
    path = tmp_path / "alpha.alive"
    listener = Listener("alpha", memory, wait=1.5, notify=Recorder())  # long polls of 1.5 s
    refreshed: list[int] = []

    def watch() -> None:  # another thread, with no database work: the listener runs in the test's
        try:
            eventually(lambda: fresh(path), timeout=10, what="the first heartbeat")
            for _ in range(3):  # made stale again and again: each time the next poll touches it
                aged(path, 600)
                eventually(lambda: fresh(path), timeout=4, what="a heartbeat within two long polls")
                refreshed.append(1)
        finally:
            listener.stop()
            memory.publish([message(event_body("insert", "1", 1, username="gus"), 0)])  # ends the poll

    watcher = threading.Thread(target=watch)
    watcher.start()
    listener.run()
    watcher.join()
    assert len(refreshed) == 3


@pytest.mark.parametrize("outage", ["aws", "database"])
def test_the_heartbeat_goes_on_while_an_outage_is_retried(monkeypatch, prefix, tmp_path, outage) -> None:  # type: ignore[no-untyped-def]
    """An outage is no reason to restart a listener: its backoff (here 1, 2, then 4 s) keeps the file fresh."""
    import threading
    import time

    from django.db import OperationalError

    import reactive.listener
    from reactive.errors import ServiceUnavailable
    from reactive.heartbeat import Heartbeat
    from reactive.transport.memory import MemoryTransport
    from tests.support.services import eventually

    monkeypatch.setenv("REACTIVE_PREFIX", prefix)
    memory = MemoryTransport()  # a message refused by the database comes back at once, ten times
    memory.create_queue(f"{prefix}-alpha", visibility_timeout=0.2, max_receives=10)
    memory.subscribe(f"{prefix}-alpha")
    attempts: list[float] = []
    if outage == "aws":

        def receive(*args, **kwargs):  # type: ignore[no-untyped-def]
            attempts.append(time.monotonic())
            raise ServiceUnavailable("cannot reach the AWS endpoint")

        monkeypatch.setattr(memory, "receive", receive)
    else:

        def database_down(events, using):  # type: ignore[no-untyped-def]
            attempts.append(time.monotonic())
            raise OperationalError("connection refused")

        monkeypatch.setattr(reactive.listener, "apply_batch", database_down)
        memory.publish([message(event_body("insert", "1", 1, username="hal"), 0)])
    path = tmp_path / "listener.alive"
    listener = Listener("alpha", memory, wait=0, notify=Recorder(), heartbeat=Heartbeat(path))
    seen: dict[str, int] = {}

    def watch() -> None:
        try:
            eventually(lambda: len(attempts) >= 3, timeout=15, interval=0.02, what="three failed attempts")
            aged(path, 600)  # now in the third backoff, 4 s long: no attempt, no poll, only the wait
            seen["before"] = len(attempts)
            eventually(lambda: fresh(path), timeout=2.5, interval=0.05, what="a heartbeat during the backoff")
            seen["after"] = len(attempts)
        finally:
            listener.stop()

    watcher = threading.Thread(target=watch)
    watcher.start()
    listener.run()
    watcher.join()
    assert seen["before"] == seen["after"] == 3, seen  # touched by the wait itself, not by a new attempt


class LayerDown:
    """A notifier whose channel layer takes nothing until ``up``, then everything (the count it took)."""

    def __init__(self) -> None:
        self.up = False
        self.sent: list[tuple[str, dict]] = []

    def __call__(self, changes) -> int:  # type: ignore[no-untyped-def]
        changes = list(changes)
        if not self.up:
            self.up = True  # back for the next try
            return 0
        self.sent.extend((pk, dict(p)) for pk, p in changes)
        return len(changes)


def test_changes_the_channel_layer_did_not_take_are_sent_again_the_latest_per_user(
    memory, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """Redis was out when the batch committed: a page would have shown the old profile until reloaded.
    Before its next poll the listener sends again what the layer did not take, the latest per user."""
    layer = LayerDown()
    listener = make_listener(memory, layer)
    bodies = [
        event_body("insert", "1", 1, username="alice", first_name="Alice"),
        event_body("update", "1", 2, first_name="Al"),
        event_body("insert", "2", 3, username="bob", first_name="Bob"),
    ]
    memory.publish([message(b, i) for i, b in enumerate(bodies)])
    with caplog.at_level(logging.INFO, logger="reactive.listener"):
        totals = listener.run(once=True)
    assert (totals.applied, totals.acked) == (3, 3)  # committed and acked all the same
    alice, bob = (str(User.objects.get(username=u).pk) for u in ("alice", "bob"))
    assert [(pk, p["first_name"]) for pk, p in layer.sent] == [(alice, "Al"), (bob, "Bob")]
    assert listener.unnotified.profiles == {}
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "reactive.listener" and "channel layer" in r.getMessage()
    ]
    assert lines == [
        "2 changes wait for the channel layer: sent again before every poll",
        "the channel layer took the changes that waited for it",
    ]


def test_what_waits_for_the_channel_layer_is_bounded_and_said_at_exit(
    memory, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    from reactive.listener import Unnotified

    never = Unnotified(lambda changes: 0, lambda held: held, limit=2)
    with caplog.at_level(logging.WARNING, logger="reactive.listener"):
        never.send([("1", {"v": 1}), ("2", {"v": 2}), ("3", {"v": 3})])
        never.send([("2", {"v": 4})])
    assert never.profiles == {"3": {"v": 3}, "2": {"v": 4}}  # the oldest given up; 2's latest kept
    assert "gave up pushing 1 changes to browsers" in caplog.text

    down = Listener("alpha", memory, wait=0, notify=lambda changes: 0)
    memory.publish([message(event_body("insert", "1", 1, username="alice"), 1)])
    with caplog.at_level(logging.WARNING, logger="reactive.listener"):
        down.run(once=True)
    assert "1 changes never reached browsers (the channel layer is down)" in caplog.text


def test_a_waiting_change_is_dropped_once_a_newer_one_of_its_user_exists(memory) -> None:  # type: ignore[no-untyped-def]
    """Alice's disabling waits for the layer. Sent late, an outdated end would close her sockets for good:
    a newer change of hers in the same send replaces it, and so does one another listener of the client
    applied (and announced) meanwhile."""
    from reactive.listener import Unnotified
    from reactive.replica import ReplicaState

    sent: list[tuple[str, dict]] = []
    never_then_all = iter([0, None])
    same_send = Unnotified(lambda changes: sent.extend(changes) or next(never_then_all), lambda held: held)
    same_send.send([("7", {"version": 4, "is_active": False})])
    sent.clear()
    same_send.send([("7", {"version": 5, "is_active": True})])
    assert sent == [("7", {"version": 5, "is_active": True})] and same_send.profiles == {}

    layer = LayerDown()
    listener = make_listener(memory, layer)
    bodies = [
        event_body("insert", "1", 1, username="alice", first_name="Alice"),
        event_body("update", "1", 2, is_active=False),
        event_body("insert", "2", 3, username="bob", first_name="Bob"),
    ]
    memory.publish([message(b, i) for i, b in enumerate(bodies)])
    failing_notify = layer.__call__

    def meanwhile_another_listener_enables_alice(changes):  # type: ignore[no-untyped-def]
        if not layer.up:
            ReplicaState.objects.filter(key="1").update(version=9)
        return failing_notify(changes)

    listener.unnotified.notify = meanwhile_another_listener_enables_alice
    listener.run(once=True)
    assert [p["username"] for _, p in layer.sent] == ["bob"]  # alice's outdated end stayed unsent
    assert listener.unnotified.profiles == {}


# -- bad input that no savepoint contains, and outages that last ---------------------------------------------
def test_a_lone_surrogate_or_another_model_fails_alone_and_the_listener_goes_on(memory) -> None:  # type: ignore[no-untyped-def]
    """JSON can escape half of a UTF-16 pair, which no database can store, in a key outside any event's
    savepoint; an event can name another model, for which applying is not written. Either failed the
    whole batch (its good messages then went to the DLQ with it) and ended the listener with a traceback."""
    listener = make_listener(memory)
    bodies = [
        event_body("insert", "1", 1, username="alice"),
        '{"schema":1,"model":"auth.user","action":"insert","key":"\\ud800","version":2,"data":{"username":"b"}}',
        '{"user": {"username": "\\udc80x"}, "action": 0}',  # legacy, keyed by its username
        encode(Event(model="auth.group", action="insert", key="7", version=3, data={"username": "bob"})),
        event_body("insert", "2", 4, username="d\U0001f600"),  # a whole pair: an emoji, which is fine
    ]
    memory.publish([message(b, i) for i, b in enumerate(bodies)])
    totals = listener.run(once=True)
    assert (totals.applied, totals.failed, totals.acked) == (2, 3, 2)
    assert sorted(User.objects.values_list("username", flat=True)) == ["alice", "d\U0001f600"]


def test_a_batch_broken_as_a_whole_is_applied_one_event_a_transaction(memory, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """Whatever else breaks a batch outside the events' savepoints (a bug): its events are applied one
    transaction each, so only the culprit fails; the rest commit and are acked."""
    import reactive.replica

    read = reactive.replica._Known._read

    def read_or_break(self, label, keys):  # type: ignore[no-untyped-def]
        if "3" in keys:
            raise RuntimeError("a bug that event 3 trips")
        return read(self, label, keys)

    monkeypatch.setattr(reactive.replica._Known, "_read", read_or_break)
    listener = make_listener(memory)
    bodies = [event_body("insert", str(k), k, username=f"u{k}") for k in (1, 2, 3, 4)]
    memory.publish([message(b, i) for i, b in enumerate(bodies)])
    with caplog.at_level(logging.ERROR, logger="reactive.listener"):
        totals = listener.run(once=True)
    assert (totals.applied, totals.failed, totals.acked) == (3, 1, 3)
    assert sorted(User.objects.values_list("username", flat=True)) == ["u1", "u2", "u4"]
    assert [r.message for r in caplog.records if r.levelno == logging.ERROR] == [
        "listener alpha: a batch failed as a whole; applying its events one by one"
    ]


def test_an_outage_of_a_weekend_is_retried_every_30_s_and_never_ends_the_listener(
    memory, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The backoff doubles up to 30 s and stays there: its exponent once grew without end, and after
    1,024 failures in a row (some 8.5 hours) 2**1024 ended the listener with an OverflowError."""
    from reactive.errors import ServiceUnavailable

    listener = make_listener(memory)
    delays: list[float] = []

    def down(*args, **kwargs):  # type: ignore[no-untyped-def]
        if len(delays) >= 1100:
            listener.stop()
        raise ServiceUnavailable("cannot reach the AWS endpoint")

    monkeypatch.setattr(memory, "receive", down)
    monkeypatch.setattr(listener.heartbeat, "pause", lambda stop, seconds: delays.append(seconds))
    listener.run()
    assert len(delays) >= 1100
    assert delays[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0] and set(delays[5:]) == {30.0}


def test_acks_never_linger_on_a_fifo_queue(monkeypatch, prefix) -> None:  # type: ignore[no-untyped-def]
    """On a FIFO queue a message in flight holds back the next of its group (the same user): an ack that
    waited would make every next change of that user wait as long. On a standard queue it may wait."""
    from reactive.settings import names
    from reactive.transport.memory import MemoryTransport

    monkeypatch.setenv("REACTIVE_PREFIX", prefix)
    kept: dict[bool, int] = {}
    for fifo in (False, True):
        monkeypatch.setenv("REACTIVE_FIFO", "1" if fifo else "0")
        transport = MemoryTransport()
        transport.create_queue(names().queue("alpha"), visibility_timeout=30)
        transport.subscribe(names().queue("alpha"))
        listener = Listener("alpha", transport, wait=0, notify=Recorder(), ack_linger=5)
        listener.run(once=True)  # learns the queue's visibility timeout
        transport.publish([message(event_body("insert", str(int(fifo)), 1, username=f"f{int(fifo)}"), 0)])
        report = listener.process(transport.receive(listener.queue, wait_seconds=0))
        kept[fifo] = report.received - report.acked
    assert kept == {False: 1, True: 0}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("on_postgres")
def test_a_connection_postgresql_dropped_outside_a_batch_is_replaced(memory) -> None:  # type: ignore[no-untyped-def]
    """With the channel layer down, each round's first query (is a waiting change still current?) runs
    outside any transaction. When PostgreSQL has dropped the session (a restart, a failover), Django
    marks the connection broken but never closes it outside a request: every later query failed on it,
    for good, while the heartbeat said all was well. The listener now drops it, and the next round
    connects again."""
    import threading

    import psycopg
    from django.db import connection, connections

    from tests.support.services import eventually

    listener = Listener("alpha", memory, wait=0.2, notify=lambda changes: 0)  # the layer takes nothing
    memory.publish([message(event_body("insert", "1", 1, username="alice"), 0)])
    backend: list[int] = []
    process = listener.process

    def process_and_note_the_session(messages):  # type: ignore[no-untyped-def]
        report = process(messages)
        backend.append(connection.connection.info.backend_pid)
        return report

    listener.process = process_and_note_the_session  # type: ignore[method-assign]
    failed: list[Exception] = []
    still_current = listener.unnotified.current

    def still_current_or_failed(profiles):  # type: ignore[no-untyped-def]
        try:
            return still_current(profiles)
        except Exception as exc:
            failed.append(exc)
            raise

    listener.unnotified.current = still_current_or_failed
    totals: list[int] = []

    def drop_the_session_then_send_another() -> None:
        try:
            eventually(lambda: backend, timeout=10, what="the first batch")
            dsn = connection.settings_dict
            server = {
                "host": dsn["HOST"],
                "port": dsn["PORT"],
                "user": dsn["USER"],
                "password": dsn["PASSWORD"],
            }
            with psycopg.connect(**server, dbname="postgres", autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [backend[0]])
            # The round's query outside a transaction finds the session gone first; only then does a
            # batch come (a batch's transaction would have dropped the broken connection by itself).
            eventually(lambda: failed, timeout=10, what="the query outside a batch failing")
            memory.publish([message(event_body("insert", "2", 2, username="bob"), 1)])
            eventually(lambda: User.objects.filter(username="bob").exists(), timeout=15, what="bob applied")
        finally:
            listener.stop()
            connections.close_all()  # this thread's own

    watcher = threading.Thread(target=drop_the_session_then_send_another)
    watcher.start()
    totals.append(listener.run().applied)
    watcher.join()
    connection.close()
    assert totals == [2]


def test_aws_out_of_reach_at_start_up_is_waited_out_not_an_exit(memory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The listener exited 3 when its first call failed: an orchestrator then restarted it with a backoff
    of its own (Kubernetes' grows to 5 minutes), while AWS was back in seconds. A one-shot drain still
    fails at once, and a stop during the wait ends the listener cleanly."""
    from reactive.errors import ServiceUnavailable

    listener = Listener("alpha", memory, wait=0, notify=lambda changes: listener.stop())
    real = memory.visibility_timeout
    calls: list[int] = []

    def out_of_reach_twice(queue: str) -> float:
        calls.append(1)
        if len(calls) <= 2:
            raise ServiceUnavailable("cannot reach the AWS endpoint")
        return real(queue)

    monkeypatch.setattr(memory, "visibility_timeout", out_of_reach_twice)
    waits: list[float] = []
    monkeypatch.setattr(listener.heartbeat, "pause", lambda stop, seconds: waits.append(seconds) or False)
    memory.publish([message(event_body("insert", "1", 1, username="alice"), 0)])
    assert listener.run().applied == 1
    assert waits == [1.0, 2.0]

    calls.clear()
    with pytest.raises(ServiceUnavailable):
        make_listener(memory).run(once=True)

    calls.clear()
    stopping = make_listener(memory)
    monkeypatch.setattr(stopping.heartbeat, "pause", lambda stop, seconds: True)  # SIGTERM during the wait
    assert stopping.run().received == 0


def test_the_listener_gives_a_held_name_to_its_replica_once_free_and_pushes_it(memory) -> None:  # type: ignore[no-untyped-def]
    """Between polls, and at its start: the local account that held the name was deleted meanwhile."""
    from reactive.replica import ReplicaState, apply

    users = User
    local = users.objects.create_user("ops")
    apply(Event(model="auth.user", action="insert", key="5", version=1, data={"username": "bob"}))
    apply(Event(model="auth.user", action="update", key="5", version=2, data={"username": "ops"}))
    local.delete()
    pushed = Recorder()
    make_listener(memory, pushed).run(once=True)
    replica = users.objects.get(username="ops")
    assert ReplicaState.objects.get(key="5").held_username == ""
    assert [(pk, profile["username"]) for pk, profile in pushed.sent] == [(str(replica.pk), "ops")]
