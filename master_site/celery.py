"""Celery app of the master: relays the outbox on commit; beat sweeps what is left pending."""

from __future__ import annotations

import os

from celery import Celery

from reactive.worker import keep_database_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "master_site.settings")

app = Celery("master_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["reactive"])
keep_database_connections(app)  # a relay per commit: no new database connection for each
