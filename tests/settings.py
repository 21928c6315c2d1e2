"""One settings module for in-process tests of both sides. Capture is off unless a test turns it on
(the ``captured`` fixture), so that replica writes in the same database are never captured."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

os.environ.setdefault("REACTIVE_CLIENT", "alpha")
BASE_DIR = Path(__file__).resolve().parent.parent
DEBUG = False
SECRET_KEY = "tests-secret-key"
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
REACTIVE_CLIENT = "alpha"
REACTIVE_SITE = "both"  # one process plays the master and client alpha: master commands may run here
REACTIVE_SSO_KEY = "tests-sso-key-0123456789abcdef"
REACTIVE_CAPTURE = False
REACTIVE_SYNC_PREDICATE = "reactive.capture.non_staff"
REACTIVE_CLIENT_URLS = {"alpha": "http://alpha.example", "beta": "http://beta.example"}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "reactive",
    "master_site.accounts",
    "client_site.web",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "client_site.urls"
CSRF_FAILURE_VIEW = "client_site.web.views.csrf_failure"  # as client_site/settings.py
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "client_site" / "templates", BASE_DIR / "master_site" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
_postgres = os.environ.get("TEST_POSTGRES_URL")
DATABASES = {
    "default": dict(dj_database_url.parse(_postgres))
    if _postgres
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    # A second database for the tests of a master that writes users (and their outbox rows) to more than one.
    "users": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "client_site" / "static"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
CELERY_TASK_ALWAYS_EAGER = True
