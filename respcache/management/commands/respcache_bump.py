"""``manage.py respcache_bump SLUG``: bump the workload's key version; print the new one."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from respcache import selectors, services


class Command(BaseCommand):
    help = "Bump a workload's key version: every older entry becomes unreachable at once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")

    def handle(self, *args: Any, **options: Any) -> None:
        workload = selectors.workload_get(options["slug"])
        if workload is None:
            raise CommandError(f"unknown workload: {options['slug']}")
        self.stdout.write(str(services.workload_bump(workload, actor="command")))
