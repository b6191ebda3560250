"""``manage.py respcache_import SLUG FILE [--ttl SECONDS] [--skip-existing]``: load an export."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from respcache import selectors
from respcache.exceptions import CacheUnavailable
from respcache.services import transfer


class Command(BaseCommand):
    help = "Load a respcache_export file under the workload's current key version (validated whole first)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("file", metavar="FILE", help="An export file, or - for standard input.")
        parser.add_argument(
            "--ttl", type=int, metavar="SECONDS", help="Serve every entry this long (default: the TTL it had left)."
        )
        parser.add_argument(
            "--skip-existing", action="store_true", help="Keep entries already present (default: overwrite them)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        workload = selectors.workload_get(options["slug"])
        if workload is None:
            raise CommandError(f"unknown workload: {options['slug']}")
        ttl = options["ttl"]
        if ttl is not None and ttl < 1:
            raise CommandError("--ttl: at least 1 second")
        path = options["file"]
        try:
            if path == "-":
                entries = transfer.parse_export(sys.stdin.buffer)
            else:
                with open(path, "rb") as lines:
                    entries = transfer.parse_export(lines)
            done = transfer.import_entries(workload, entries, ttl_seconds=ttl, skip_existing=options["skip_existing"])
        except transfer.ImportRefused as exc:
            raise CommandError(exc.message) from exc
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc}") from exc
        except CacheUnavailable as exc:
            raise CommandError(f"Redis is unavailable: {exc}") from exc
        skipped = f", skipped {done['skipped']} already present" if options["skip_existing"] else ""
        self.stdout.write(f"imported {done['imported']} entries into {workload.slug}{skipped}")
