"""Events per second from master saves to both replicas, AWS requests per event, commit-to-commit latency.

Same moto server, same run: reactive (outbox + PublishBatch relay + batched listener, DeleteMessageBatch)
against the original prototype's way (one SNS Publish per event, messages applied and deleted one by one).
AWS requests are counted with botocore's event hooks. Producers keep at most WINDOW events in flight, because
moto's receive slows down as a queue's backlog grows. A third mode, the ceiling, sends the same events through
reactive's transport alone in ideal batches: how far batching by itself goes on this moto server.
"""

from __future__ import annotations

import functools
import os
import queue
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from common import (
    configure_django,
    cpu_seconds,
    machine,
    markdown_table,
    percentile,
    start_moto,
    write_section,
)

from reactive.transport.base import BATCH_LIMIT as BATCH  # PublishBatch, receive and delete: ten at most

EVENTS = int(os.environ.get("BENCH_EVENTS", "600"))
WINDOW = int(os.environ.get("BENCH_WINDOW", "20"))
SETUP_REQUESTS = {"GetQueueUrl", "GetQueueAttributes"}  # once per process, not per event: listed apart
USERS = 100
MAX_SECONDS = float(os.environ.get("BENCH_MAX_SECONDS", "45"))
CLIENTS = ("alpha", "beta")


class Probe:
    """Counts AWS requests (botocore before-send) and moto's CPU, and records commit times on both sides."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.moto_cpu = 0.0  # seconds the moto server spent while this mode ran
        self.saved: dict[str, float] = {}
        self.applied: dict[tuple[str, str], float] = {}
        self.done = 0  # changes on every client
        self.lock = threading.Lock()
        self.progress = threading.Condition(self.lock)

    def client(self, service: str) -> Any:
        from reactive.transport.sqs import make_client

        client = make_client(service)
        client.meta.events.register("before-send", self._count)
        return client

    def _count(self, **kwargs: Any) -> None:
        with self.lock:
            self.requests[str(kwargs.get("event_name", "")).rsplit(".", 1)[-1]] += 1

    def on_applied(self, client: str) -> Callable[[Any], None]:
        def record(changes: Any) -> None:
            now = time.perf_counter()
            with self.progress:
                for _, profile in changes:
                    marker = profile["first_name"]
                    if (client, marker) in self.applied:
                        continue  # a redelivery: the first commit is the one that counts
                    self.applied[(client, marker)] = now
                    if all((c, marker) in self.applied for c in CLIENTS):
                        self.done += 1
                self.progress.notify_all()

        return record

    def in_flight(self) -> int:
        # Counted as changes land, not recounted per check: the harness shares the GIL with the modes.
        return len(self.saved) - self.done

    def completed(self) -> int:
        return self.done

    def wait_window(self, limit: int, timeout: float = 60) -> None:
        with self.progress:
            self.progress.wait_for(lambda: self.in_flight() < limit, timeout)

    def per_event_requests(self) -> int:
        return sum(n for name, n in self.requests.items() if name not in SETUP_REQUESTS)

    def latencies_ms(self) -> list[float]:
        return [
            (self.applied[(c, m)] - t) * 1000
            for m, t in self.saved.items()
            for c in CLIENTS
            if (c, m) in self.applied
        ]


def provision(prefix: str) -> None:
    os.environ["REACTIVE_PREFIX"] = prefix
    from reactive.provision import Options, Provisioner

    Provisioner(Options(clients=list(CLIENTS))).run()


def run_reactive(users: list[Any]) -> tuple[Probe, float]:
    from reactive import capture, outbox
    from reactive.listener import Listener
    from reactive.transport.sqs import SqsTransport

    provision(f"bench-r{uuid.uuid4().hex[:6]}")
    probe = Probe()
    names = __import__("reactive.settings", fromlist=["names"]).names()
    wake = threading.Event()
    stop = threading.Event()
    outbox._request_relay = wake.set  # what the Celery task does, in a thread of this process

    def relay() -> None:
        transport = SqsTransport(names.topic, probe.client("sns"), probe.client("sqs"))
        while not stop.is_set():
            if wake.wait(0.2):
                wake.clear()
                while outbox.relay_pending(transport).sent:
                    pass

    listeners = []
    for client in CLIENTS:
        transport = SqsTransport(names.topic, probe.client("sns"), probe.client("sqs"))
        listeners.append(Listener(client, transport, wait=2, using=client, notify=probe.on_applied(client)))
    threads = [threading.Thread(target=relay)] + [threading.Thread(target=lst.run) for lst in listeners]
    capture.track(type(users[0]), predicate=capture.non_staff, databases=["default"])
    try:
        elapsed = drive(
            threads, lambda: produce(users, probe), stop, stopping=[lst.stop for lst in listeners]
        )
    finally:
        capture.untrack(type(users[0]))
    return probe, elapsed


def run_baseline(users: list[Any]) -> tuple[Probe, float]:
    """The prototype: post_save publishes one message per event; listeners apply and delete one by one."""
    from django.db import transaction
    from django.db.models.signals import post_save

    from reactive.events import Event, decode, encode
    from reactive.replica import apply
    from reactive.settings import names as current_names

    provision(f"bench-b{uuid.uuid4().hex[:6]}")
    names = current_names()
    probe = Probe()
    stop = threading.Event()
    outgoing: queue.Queue[str] = queue.Queue()
    version = iter(range(1, 10**9))

    def on_save(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
        if using != "default":
            return  # a replica's own write, not a master change
        data = {"username": instance.username, "first_name": instance.first_name}
        event = Event(
            model="auth.user", action="update", key=str(instance.pk), version=next(version), data=data
        )
        outgoing.put(encode(event))  # the prototype's Celery task, one per save

    def publisher() -> None:
        sns = probe.client("sns")
        sqs = probe.client("sqs")
        from reactive.transport.sqs import SqsTransport

        arn = SqsTransport(names.topic, sns, sqs).topic_arn
        while not stop.is_set():
            try:
                body = outgoing.get(timeout=0.2)
            except queue.Empty:
                continue
            sns.publish(
                TopicArn=arn,
                Message=body,
                MessageAttributes={
                    "model": {"DataType": "String", "StringValue": "auth.user"},
                },
            )

    def listener(client: str) -> None:
        sqs = probe.client("sqs")
        url = sqs.get_queue_url(QueueName=names.queue(client))["QueueUrl"]
        record = probe.on_applied(client)
        while not stop.is_set():
            for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            ):
                with transaction.atomic(using=client):
                    outcome = apply(decode(message["Body"]), client)
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                if outcome.profile:
                    record([(outcome.local_pk, outcome.profile)])

    post_save.connect(on_save, sender=type(users[0]), dispatch_uid="baseline")
    threads = [threading.Thread(target=publisher)] + [
        threading.Thread(target=listener, args=(c,)) for c in CLIENTS
    ]
    try:
        elapsed = drive(threads, lambda: produce(users, probe), stop)
    finally:
        post_save.disconnect(sender=type(users[0]), dispatch_uid="baseline")
    return probe, elapsed


def run_ceiling(users: list[Any]) -> tuple[Probe, float]:
    """Reactive's transport alone in ideal batches: what batching by itself gets out of this moto server.

    The same events as reactive's (every tracked field, the same message attributes) go out in full
    PublishBatches, at most WINDOW in flight, refilled ten at a time (so WINDOW-10 to WINDOW in flight);
    each client receives up to ten at a time and deletes ten at a time, a little over 0.5 requests per
    event. No Django, no database, no relay or listener logic: what moto spends here is what this traffic
    costs it with nothing else in the way.
    """
    from reactive import capture
    from reactive.errors import ReactiveError
    from reactive.events import Event, decode, encode
    from reactive.settings import names as current_names
    from reactive.transport.base import OutgoingMessage
    from reactive.transport.sqs import SqsTransport

    provision(f"bench-c{uuid.uuid4().hex[:6]}")
    names = current_names()
    probe = Probe()
    stop = threading.Event()
    tracking = capture.track(type(users[0]), predicate=capture.non_staff, databases=["default"])
    try:
        fields = [capture.serialize(capture.snapshot(user, tracking)) for user in users]
    finally:
        capture.untrack(type(users[0]))

    def message(i: int, marker: str) -> OutgoingMessage:
        user = users[i % len(users)]
        event = Event(
            model="auth.user",
            action="update",
            key=str(user.pk),
            version=i + 1,
            data={**fields[i % len(users)], "first_name": marker},
            changed=("first_name",),
        )
        return OutgoingMessage(id=str(i % BATCH), body=encode(event), attributes=event.message_attributes())

    def consumer(client: str) -> None:
        transport = SqsTransport(names.topic, probe.client("sns"), probe.client("sqs"))
        record = probe.on_applied(client)
        queue_name = names.queue(client)
        unacked: list[str] = []  # deleted ten at a time, as the listener does
        while not stop.is_set():
            try:
                received = transport.receive(queue_name, max_messages=BATCH, wait_seconds=2, lean=True)
            except ReactiveError as exc:  # moto drops a request now and then under load: poll again
                print(f"  ceiling {client}: {exc}", file=sys.stderr)
                continue
            record([(None, decode(m.body).data) for m in received])
            unacked += [m.receipt for m in received]
            while len(unacked) >= BATCH:
                transport.delete(queue_name, unacked[:BATCH])
                del unacked[:BATCH]
        if unacked:
            transport.delete(queue_name, unacked)

    def producer() -> float:
        transport = SqsTransport(names.topic, probe.client("sns"), probe.client("sqs"))
        start = time.perf_counter()
        for first in range(0, EVENTS, BATCH):
            probe.wait_window(WINDOW - BATCH + 1, timeout=10)  # room for a whole batch
            if time.perf_counter() - start > MAX_SECONDS:
                break
            markers = {i: f"m{i}-{uuid.uuid4().hex[:4]}" for i in range(first, min(first + BATCH, EVENTS))}
            outgoing = [message(i, marker) for i, marker in markers.items()]
            with probe.lock:
                probe.saved.update((marker, time.perf_counter()) for marker in markers.values())
            failed = transport.publish(outgoing).failed
            if failed:  # an entry that never lands would hold the window: the figure would be wrong
                raise RuntimeError(f"ceiling: PublishBatch refused entries: {failed}")
        return finish(probe, start)

    threads = [threading.Thread(target=consumer, args=(c,)) for c in CLIENTS]
    return probe, drive(threads, producer, stop)


def drive(
    threads: list[threading.Thread],
    producer: Callable[[], float],
    stop: threading.Event,
    stopping: Sequence[Callable[[], None]] = (),
) -> float:
    """Start one mode's threads, produce the changes, then stop and join the threads."""
    for thread in threads:
        thread.start()
    try:
        return producer()
    finally:
        stop.set()
        for request_stop in stopping:
            request_stop()
        for thread in threads:
            thread.join()


def reset_replicas() -> None:
    from django.contrib.auth import get_user_model

    from reactive.replica import ReplicaState

    for client in CLIENTS:
        ReplicaState.objects.using(client).all().delete()
        get_user_model().objects.using(client).all().delete()


def produce(users: list[Any], probe: Probe) -> float:
    """Save EVENTS changes (first names) round-robin over the users; time until both replicas have them.

    A mode that stalls (moto drops a request now and then under load; botocore then waits out its read
    timeout) is cut off after MAX_SECONDS: its rate counts only the events that reached both replicas.
    """
    start = time.perf_counter()
    for i in range(EVENTS):
        probe.wait_window(WINDOW, timeout=10)
        if time.perf_counter() - start > MAX_SECONDS:
            break
        user = users[i % len(users)]
        marker = f"m{i}-{uuid.uuid4().hex[:4]}"
        user.first_name = marker
        user.save()
        with probe.lock:
            probe.saved[marker] = time.perf_counter()
    return finish(probe, start)


def finish(probe: Probe, start: float) -> float:
    """Wait for what is in flight to land on both replicas (within the mode's time); the mode's seconds."""
    probe.wait_window(1, timeout=max(5.0, MAX_SECONDS - (time.perf_counter() - start)))
    elapsed = time.perf_counter() - start
    print(
        f"  {len(probe.saved)} saved, {probe.in_flight()} not on both replicas, {elapsed:.1f} s",
        file=sys.stderr,
    )
    return elapsed


PHASES = {  # name: (events, window)
    "throughput": (EVENTS, WINDOW),
    "deep queues": (EVENTS, 2 * WINDOW),
    "latency": (int(os.environ.get("BENCH_LATENCY_EVENTS", "100")), 1),
}


MODES = {  # key (BENCH_MODES): (label, run)
    "baseline": ("baseline (prototype)", run_baseline),
    "reactive": ("reactive", run_reactive),
    "ceiling": ("ceiling (ideal batches, transport only)", run_ceiling),
}

# A quicker run for profiling: BENCH_PHASES=throughput BENCH_MODES=reactive (the table then lacks the ratio).
SELECTED_PHASES = os.environ.get("BENCH_PHASES", ",".join(PHASES)).split(",")
SELECTED_MODES = os.environ.get("BENCH_MODES", ",".join(MODES)).split(",")


def main() -> None:
    global EVENTS, WINDOW
    os.environ["REACTIVE_RELAY"] = "off"
    moto, _ = start_moto()
    moto_cpu = functools.partial(cpu_seconds, moto.pid)
    tables = []
    try:
        configure_django(["default", *CLIENTS])
        from django.contrib.auth import get_user_model

        User = get_user_model()
        users = [User.objects.create_user(f"u{i}", first_name="start") for i in range(USERS)]
        for phase, (EVENTS, WINDOW) in PHASES.items():
            if phase not in SELECTED_PHASES:
                continue
            results = {}
            for key, (label, run) in MODES.items():
                if key not in SELECTED_MODES or (key == "ceiling" and WINDOW < BATCH):
                    continue  # the ceiling is a batched figure: the latency phase's one at a time has none
                print(f"{phase}: {label} ...", file=sys.stderr)
                reset_replicas()  # the modes number versions differently: each starts from empty replicas
                before = moto_cpu()
                results[key] = run(users)
                results[key][0].moto_cpu = moto_cpu() - before
            tables.append((phase, EVENTS, WINDOW, table_of(results) + against_ceiling(results)))
    finally:
        moto.terminate()
    report(tables)


def table_of(results: dict[str, tuple[Probe, float]]) -> str:
    rows = []
    base_rate = events_per_second(results["baseline"]) if "baseline" in results else 0.0
    for key, (probe, elapsed) in results.items():
        done = probe.completed()
        rate = events_per_second((probe, elapsed))
        lat = probe.latencies_ms()
        detail = ", ".join(f"{k} {v}" for k, v in sorted(probe.requests.items()))
        rows.append(
            [
                MODES[key][0],
                f"{done}/{len(probe.saved)}",
                f"{rate:.1f}",
                f"{rate / base_rate:.2f}x" if base_rate else "n/a",
                f"{probe.per_event_requests() / max(1, done):.3f}",
                f"{probe.moto_cpu * 1000 / max(1, done):.1f}",
                f"{probe.moto_cpu / elapsed:.0%}",
                f"{percentile(lat, 50):.1f}",
                f"{percentile(lat, 99):.1f}",
                detail,
            ]
        )
    headers = [
        "mode",
        "events on both",
        "events/s",
        "vs baseline",
        "AWS requests/event",
        "moto CPU ms/event",
        "moto busy",
        "p50 ms",
        "p99 ms",
        "requests",
    ]
    return markdown_table(headers, rows)


def events_per_second(result: tuple[Probe, float]) -> float:
    probe, elapsed = result
    return probe.completed() / elapsed


def against_ceiling(results: dict[str, tuple[Probe, float]]) -> str:
    """How much of what this moto server can give one-event-per-message traffic each mode got."""
    rates = {key: events_per_second(result) for key, result in results.items()}
    ceiling = rates.pop("ceiling", 0.0)
    if not ceiling or not rates:
        return ""
    shares = ", ".join(f"{MODES[key][0]} {rate / ceiling:.0%}" for key, rate in rates.items())
    return f"\n\nOf the ceiling's events/s: {shares}."


def report(tables: list[tuple[str, int, int, str]]) -> None:
    parts = []
    for phase, events, window, table in tables:
        print(f"{phase}: {events} events, at most {window} in flight\n{table}\n")
        parts.append(f"### {phase}: up to {events} events, at most {window} in flight\n\n{table}")
    body = "\n\n".join(parts)
    if set(PHASES) - {phase for phase, *_ in tables} or set(MODES) - set(SELECTED_MODES):
        return  # a partial run is for looking, not for the report
    write_section(
        "pipeline",
        "## Pipeline (bench/pipeline.py)\n\n"
        "User changes saved on the master, each applied on two replicas (alpha, beta); one moto server process, "
        f"SQLite files, {machine()}; at most {MAX_SECONDS:.0f} s a mode. The throughput phases keep a window of "
        f"events in flight: {PHASES['throughput'][1]} (two PublishBatches' worth), then "
        f"{PHASES['deep queues'][1]} to show what deeper queues "
        "cost on moto. The latency phase saves one change at a time, so its figures are commit to commit "
        "without queueing. Latency is save commit to replica commit, for every event on both clients. AWS "
        "requests per event count the calls that move events (publish, receive, delete; retries included, "
        "through botocore's before-send hook); the once-per-process lookups (GetQueueUrl, "
        "GetQueueAttributes) are only in the last column. Moto CPU is what the moto server process used "
        "during the mode, per event; moto busy is that CPU over the mode's time (100% is one core, all it "
        "can use).\n\n"
        f"{body}\n\nTargets: at least 4x the baseline's events/s, at most 0.5 AWS requests per event, "
        "p50 at most 20 ms and p99 at most 100 ms."
        "\n\nThe ceiling row (throughput phases only) is reactive's transport alone: the same events as the "
        "reactive row (every tracked field, the same message attributes) in full PublishBatches, at most the "
        "same window in flight but refilled ten at a time, each client receiving up to ten at a time and "
        "deleting ten at a time; no Django, no database, no relay or listener logic. It shows how far "
        "batching by itself takes one-event-per-message traffic (the wire format) on this moto server. "
        "Reactive's moto CPU per event comes out about the ceiling's: what separates the two rows is how "
        "busy each kept moto."
        "\n\nWhy the figures stop where they do: moto's server is the bottleneck (one process, one core under "
        "its GIL). Every request pays a fixed cost: werkzeug's development server closes the connection after "
        "each response, so each request is a new TCP connection and a new thread, and moto lists its own "
        "package directory to route it. Every message sent computes all of its queue's attributes, and every "
        "message received three times, each time converting every attribute name and scanning the queue's "
        "messages: a receive costs more the deeper the queue. Batching saves the per-request part; the "
        "per-message part stays, one SNS message and one SQS message per client for every event. Once moto "
        "is nearly always busy, events/s can only grow as its CPU per event falls: the throughput ratio is "
        "then about the inverse ratio of moto CPU per event, times the ratio of how busy moto was in each "
        "mode. With two clients, full batches everywhere give exactly 0.5 requests per event (0.1 "
        "PublishBatch, 0.2 ReceiveMessage, 0.2 DeleteMessageBatch): any batch short of 10 is above it, and a "
        "long poll that wakes on the first messages of a PublishBatch takes a short one, which puts even the "
        "ceiling row a little above 0.5.",
    )


if __name__ == "__main__":
    main()
