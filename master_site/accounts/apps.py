from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """The master's user app: registers change capture on the user model."""

    name = "master_site.accounts"
    label = "accounts"

    def ready(self) -> None:
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from django.utils.module_loading import import_string

        from reactive import capture
        from reactive import settings as reactive_settings

        if getattr(settings, "REACTIVE_CAPTURE", True):
            reactive_settings.relay_mode()  # a typo fails at start-up, not at every commit
            capture.track(
                get_user_model(),
                fields=getattr(settings, "REACTIVE_TRACKED_FIELDS", None),
                predicate=import_string(
                    getattr(settings, "REACTIVE_SYNC_PREDICATE", capture.DEFAULT_PREDICATE)
                ),
            )
