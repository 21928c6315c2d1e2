"""What the client site stores itself: the login links already used (single use)."""

from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError, models, transaction
from django.utils import timezone


class UsedLoginLink(models.Model):
    """A login link's nonce, recorded the moment a browser opens the link; a second use finds it here."""

    nonce = models.CharField(max_length=64, primary_key=True)
    username = models.CharField(max_length=150)
    used_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"{self.username} at {self.used_at:%Y-%m-%d %H:%M:%S}"


def mark_used(nonce: str, username: str, keep: timedelta) -> bool:
    """Record a nonce; False when it was used before. Rows older than ``keep`` (links expired) are pruned."""
    try:
        with transaction.atomic():
            UsedLoginLink.objects.create(nonce=nonce, username=username)
    except IntegrityError:
        return False
    UsedLoginLink.objects.filter(used_at__lt=timezone.now() - keep).delete()
    return True
