"""Time per save on the master: plain save vs capture + outbox vs the original prototype's pre_save SELECT.

Prints a table with ratios to the plain save from the same run, and writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from common import configure_django, machine, markdown_table, median, write_section

SAVES = int(os.environ.get("BENCH_SAVES", "2000"))
ROUNDS = 9  # interleaved; the median of nine steadies a figure that a busy moment can move by a fifth


def main() -> None:
    os.environ["REACTIVE_RELAY"] = "off"  # measure the save path, not the broker
    configure_django(["default"])
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.db.models.signals import pre_save
    from django.test.utils import CaptureQueriesContext

    from reactive import bulk, capture

    User = get_user_model()
    users = [User.objects.create_user(f"bench{i}", first_name="A") for i in range(SAVES)]

    def prototype_pre_save(sender, instance, **kwargs):  # type: ignore[no-untyped-def]
        # The prototype's way: read the stored row back to find out what changed.
        if instance.pk:
            old = sender.objects.get(pk=instance.pk)
            instance._changed = [
                f
                for f in ("username", "first_name", "last_name", "email")
                if getattr(old, f) != getattr(instance, f)
            ]

    modes: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "plain save": (lambda: None, lambda: None),
        "capture + outbox": (
            lambda: capture.track(User, predicate=capture.non_staff),
            lambda: capture.untrack(User),
        ),
        "prototype pre_save SELECT": (
            lambda: pre_save.connect(prototype_pre_save, sender=User, dispatch_uid="proto"),
            lambda: pre_save.disconnect(sender=User, dispatch_uid="proto"),
        ),
    }
    timings: dict[str, list[float]] = {name: [] for name in modes}
    queries: dict[str, int] = {}
    counter = 0
    for _ in range(ROUNDS):  # interleave the modes so that drift hits each alike
        for name, (enable, disable) in modes.items():
            enable()
            fresh = list(User.objects.filter(pk__in=[u.pk for u in users]))
            start = time.perf_counter()
            for user in fresh:
                counter += 1
                user.first_name = f"N{counter}"
                user.save()
            timings[name].append((time.perf_counter() - start) / len(fresh) * 1e6)
            probe = User.objects.get(pk=users[0].pk)
            probe.first_name = f"Q{counter}"
            with CaptureQueriesContext(connection) as captured:
                probe.save()
            queries[name] = len(
                [q for q in captured.captured_queries if q["sql"].split()[0] not in ("BEGIN", "COMMIT")]
            )
            disable()

    base = median(timings["plain save"])
    rows = [
        [name, f"{median(t):.0f}", f"{median(t) / base:.2f}x", queries[name]] for name, t in timings.items()
    ]
    headers = ["mode", f"µs per save (median of {ROUNDS} rounds)", "vs plain save", "queries per save"]
    table = markdown_table(headers, rows)
    print(table)
    bulk_table, captured_row = queryset_update_table(User, [u.pk for u in users])
    print(bulk_table)
    captured_save = median(timings["capture + outbox"])
    write_section(
        "save_path",
        f"## Save path (bench/save_path.py)\n\n{SAVES} saves of a changed first name per round, SQLite (WAL), "
        f"{machine()}.\n\n{table}\n\nCapture adds one INSERT into the outbox in the same transaction and no SELECT; "
        "the prototype adds a SELECT of the row on every save. The prototype's column is only its change "
        "detection: it writes no event (its Celery call came after, per save), while capture's includes the "
        f"durable event row, so the two land close.\n\nOne `QuerySet.update()` of the same {SAVES} rows, "
        f"per row:\n\n{bulk_table}\n\nA captured update of a tracked column locks the rows, then, "
        f"{bulk.CHUNK} at a time, reads them, updates them, reads them again and writes their outbox rows "
        "with one bulk insert (which Django splits by SQLite's parameter limit): "
        f"{captured_row:.1f} µs a row, {captured_save / captured_row:.1f}x cheaper than a "
        f"captured save per row ({captured_save:.0f} µs). An update of a column that is neither tracked nor "
        "read by the predicate (`last_login`) goes straight to Django.",
    )


def queryset_update_table(User: Any, keys: list[int]) -> tuple[str, float]:
    """One QuerySet.update() over ``keys``, per row: Django alone vs captured, for a tracked and an untracked column.

    Returns the table and the captured first_name update's µs per row.
    """
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from reactive import capture

    def tracked() -> None:
        capture.track(User, predicate=capture.non_staff)

    def untracked() -> None:
        capture.untrack(User)

    counter = iter(range(10**9))
    columns: dict[str, Callable[[], dict[str, Any]]] = {
        "first_name": lambda: {"first_name": f"U{next(counter)}"},
        "last_login": lambda: {"last_login": timezone.now()},
    }
    timings: dict[tuple[str, bool], list[float]] = {}
    queries: dict[tuple[str, bool], int] = {}
    for _ in range(ROUNDS):  # interleaved, as above
        for column, values in columns.items():
            for captured in (False, True):
                (tracked if captured else untracked)()
                start = time.perf_counter()
                with CaptureQueriesContext(connection) as seen:
                    User.objects.filter(pk__in=keys).update(**values())
                elapsed = time.perf_counter() - start
                timings.setdefault((column, captured), []).append(elapsed / len(keys) * 1e6)
                queries[column, captured] = len(seen.captured_queries)
    untracked()
    rows = []
    for (column, captured), spent in timings.items():
        alone = median(timings[column, False])
        label = f"{'captured' if captured else 'Django alone'}, {column}"
        rows.append(
            [label, f"{median(spent):.1f}", f"{median(spent) / alone:.2f}x", queries[column, captured]]
        )
    headers = [
        "QuerySet.update()",
        f"µs per row (median of {ROUNDS})",
        "vs Django alone, same column",
        "queries",
    ]
    return markdown_table(headers, rows), median(timings["first_name", True])


if __name__ == "__main__":
    main()
