"""``manage.py respcache_apikey NAME --workload SLUG …``: create a key; print it alone on the last line."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from respcache import services
from respcache.models import Workload


class Command(BaseCommand):
    help = "Create a caller API key allowed the given workloads. The key is shown once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument(
            "--workload",
            action="append",
            required=True,
            metavar="SLUG",
            help="A workload the key may call (repeat for several).",
        )
        parser.add_argument(
            "--manage",
            action="append",
            default=[],
            metavar="SLUG",
            help="A workload the key may also manage through the REST API.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        slugs = list(dict.fromkeys(options["workload"]))
        managed = list(dict.fromkeys(options["manage"]))
        found = {w.slug: w for w in Workload.objects.filter(slug__in=slugs + managed)}
        missing = [s for s in slugs + managed if s not in found]
        if missing:
            raise CommandError(f"unknown workload(s): {', '.join(missing)} (create with respcache_workload)")
        if not options["name"].strip() or len(options["name"]) > 50:
            raise CommandError("NAME must be 1 to 50 characters")
        api_key, raw = services.api_key_create(
            name=options["name"],
            workloads=[found[s] for s in slugs],
            managed_workloads=[found[s] for s in managed],
        )
        self.stdout.write(f"created API key {api_key.name!r} (prefix {api_key.prefix}) for: {', '.join(slugs)}")
        if managed:
            self.stdout.write(f"it may manage: {', '.join(managed)}")
        self.stdout.write("store it now, it is not shown again:")
        self.stdout.write(raw)
