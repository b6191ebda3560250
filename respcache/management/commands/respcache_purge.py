"""``manage.py respcache_purge SLUG``: delete the workload's entries now; print how many."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from respcache import selectors, services
from respcache.exceptions import CacheUnavailable


class Command(BaseCommand):
    help = "Delete every stored entry of a workload (all key versions) and print how many."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")

    def handle(self, *args: Any, **options: Any) -> None:
        workload = selectors.workload_get(options["slug"])
        if workload is None:
            raise CommandError(f"unknown workload: {options['slug']}")
        try:
            purged = services.workload_purge(workload, actor="command")
        except CacheUnavailable as exc:
            raise CommandError(f"Redis is unavailable: {exc}") from exc
        self.stdout.write(str(purged))
