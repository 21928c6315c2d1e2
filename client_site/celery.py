"""Celery app of a client site: beat runs the clock tick twice a second."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "client_site.settings")

app = Celery("client_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["reactive"])
