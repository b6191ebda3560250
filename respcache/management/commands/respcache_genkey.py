"""``manage.py respcache_genkey``: print a new encryption key for ENCRYPTION_KEYS."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from respcache import sealing


class Command(BaseCommand):
    help = (
        "Print a new key for RESPCACHE['ENCRYPTION_KEYS'] (RESPCACHE_ENCRYPTION_KEYS): 32 random bytes in "
        "URL-safe base64. Put it first to encrypt new entries with it; keep the old keys after it to read theirs."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(sealing.generate_key())
