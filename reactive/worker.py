"""Database connections of a Celery worker: kept from task to task, checked before each one.

The master's relay runs as one Celery task per commit. Celery's Django fix-up closes every connection
around each task, so each relay used to open a new one: about 9 ms on a local PostgreSQL, about half of a
change's way from commit to replica. A worker is not an ASGI server (whose threads are why the sites
keep no connection, see settings.django_database): here a connection is kept, and before each task it
gets the check Django gives one at the start of a request. A connection that broke (the database
restarted) or that has aged past WORKER_CONN_MAX_AGE is closed, and Django's health check
(CONN_HEALTH_CHECKS) catches one that broke without an error yet, so the task opens a new one.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

# Seconds a worker keeps a connection; then the next task opens a new one (a database that moved, or
# a connection the server's limits would drop, is left behind within this time).
WORKER_CONN_MAX_AGE = 300
# Celery's own knob: its fix-up closes connections only every this many tasks (it counts the signals
# before and after each task). The check below does the real work; this keeps Celery from undoing it.
CELERY_DB_REUSE_MAX = 1000


def keep_database_connections(app: Celery) -> None:
    """Make ``app``'s workers keep their connections (call where the app is made)."""
    app.conf.update(CELERY_DB_REUSE_MAX=CELERY_DB_REUSE_MAX)
    signals.worker_init.connect(_keep_connections, weak=False, dispatch_uid="reactive.worker.keep")
    signals.task_prerun.connect(_check_connections, weak=False, dispatch_uid="reactive.worker.check")


def _keep_connections(**kwargs: Any) -> None:
    """Before any connection is opened in the worker (prefork children inherit this)."""
    from django.db import connections

    for alias in connections:
        connections[alias].settings_dict.update(CONN_MAX_AGE=WORKER_CONN_MAX_AGE, CONN_HEALTH_CHECKS=True)


def _check_connections(**kwargs: Any) -> None:
    """What Django does at the start of each request: close what is broken or too old."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close_if_unusable_or_obsolete()
