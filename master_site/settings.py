"""Settings of the master site. Configuration comes from the environment through reactive.settings."""

from __future__ import annotations

from pathlib import Path

from reactive import settings as reactive_settings

BASE_DIR = Path(__file__).resolve().parent
DEBUG = reactive_settings.debug()
SECRET_KEY = reactive_settings.secret_key(DEBUG)
ALLOWED_HOSTS = reactive_settings.allowed_hosts()
REACTIVE_SSO_KEY = reactive_settings.sso_key(DEBUG)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "reactive",
    "master_site.accounts",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "master_site.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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
ASGI_APPLICATION = "master_site.asgi.application"
DATABASES = {"default": reactive_settings.django_database("master")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = reactive_settings.time_zone()
STATIC_URL = "/static/"
STATIC_ROOT = reactive_settings.var_dir() / "static-master"
LOGIN_URL = "/admin/login/"
LOGGING = reactive_settings.logging_config()
globals().update(reactive_settings.web_settings("master"))

# What is synced: the tracked fields of auth.User (REACTIVE_TRACKED_FIELDS, default
# reactive.capture.DEFAULT_USER_FIELDS; never password or last_login), for users the predicate accepts.
REACTIVE_SYNC_PREDICATE = "reactive.capture.non_staff"
REACTIVE_CAPTURE = True
# Where each client site answers, for the login links of the master's "open" page.
REACTIVE_CLIENT_URLS = reactive_settings.client_urls()

globals().update(reactive_settings.celery_settings("master"))
CELERY_BEAT_SCHEDULE = {
    "sweep-outbox": {
        "task": "reactive.sweep_outbox",
        "schedule": reactive_settings.sweep_interval(),
        "options": {"expires": 30},
    }
}
