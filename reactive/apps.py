from django.apps import AppConfig


class ReactiveConfig(AppConfig):
    name = "reactive"
    label = "reactive"
    verbose_name = "reactive sync"
    default_auto_field = "django.db.models.BigAutoField"
