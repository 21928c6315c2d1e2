"""Settings of a client site; REACTIVE_CLIENT says which client this process is."""

from __future__ import annotations

from pathlib import Path

from reactive import settings as reactive_settings

BASE_DIR = Path(__file__).resolve().parent
DEBUG = reactive_settings.debug()
SECRET_KEY = reactive_settings.secret_key(DEBUG)
ALLOWED_HOSTS = reactive_settings.allowed_hosts()
REACTIVE_CLIENT = reactive_settings.current_client()
REACTIVE_SSO_KEY = reactive_settings.sso_key(DEBUG)

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "reactive",
    "client_site.web",
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
ROOT_URLCONF = "client_site.urls"
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
ASGI_APPLICATION = "client_site.asgi.application"
DATABASES = {"default": reactive_settings.django_database("client", REACTIVE_CLIENT)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = reactive_settings.time_zone()
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = reactive_settings.var_dir() / f"static-{REACTIVE_CLIENT}"
LOGIN_URL = "/login/"
CSRF_FAILURE_VIEW = "client_site.web.views.csrf_failure"  # a stale form says so, in the site's words
LOGGING = reactive_settings.logging_config()
globals().update(reactive_settings.web_settings(REACTIVE_CLIENT))

# The fields a replica accepts from events: REACTIVE_REPLICA_FIELDS, default reactive.capture.DEFAULT_USER_FIELDS.

CHANNEL_LAYERS = reactive_settings.channel_layers(REACTIVE_CLIENT)

globals().update(reactive_settings.celery_settings(f"client-{REACTIVE_CLIENT}"))
CELERY_BEAT_SCHEDULE = {
    "clock-tick": {
        "task": "reactive.clock_tick",
        # Read leniently here (every client process imports this); `reactive beat` checks its own value.
        "schedule": reactive_settings.clock_schedule_interval(),
        # A tick queued while the workers were down is dropped, not replayed late.
        "options": {"expires": 1.0},
    }
}
