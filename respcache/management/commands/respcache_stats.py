"""``manage.py respcache_stats [SLUG] [--window 5m|1h|24h|7d] [--json]``: the numbers."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from respcache import selectors, stats
from respcache.exceptions import CacheUnavailable


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


class Command(BaseCommand):
    help = "Print each workload's numbers over a rolling window."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", nargs="?")
        parser.add_argument("--window", default="1h", choices=list(stats.WINDOWS))
        parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["slug"]:
            workload = selectors.workload_get(options["slug"])
            if workload is None:
                raise CommandError(f"unknown workload: {options['slug']}")
            workloads = [workload]
        else:
            workloads = selectors.workloads_list()
        try:
            window = options["window"]
            numbers = selectors.workloads_numbers([w.slug for w in workloads], (window,))  # one round trip
            rows = [(w, numbers[w.slug][window]) for w in workloads]
        except CacheUnavailable as exc:
            raise CommandError(f"Redis is unavailable: {exc}") from exc
        if options["json"]:
            payload = [
                {"workload": w.slug, "key_version": w.key_version, "enabled": w.enabled, **t.as_dict()} for w, t in rows
            ]
            self.stdout.write(json.dumps(payload, indent=2))
            return
        header = (
            f"{'workload':<24} {'window':>6} {'requests':>9} {'hit':>7} {'wait':>6} {'miss':>7} "
            f"{'fallthr':>7} {'bypass':>7} {'refresh':>7} {'up_err':>6} {'cache_err':>9} "
            f"{'hit_rate':>8} {'stampede':>8} {'dead_wr':>8} {'saved_in':>9} {'saved_out':>9} "
            f"{'shadow':>7} {'would_hit':>9} {'agreement':>9}"
        )
        self.stdout.write(header)
        for w, t in rows:
            self.stdout.write(
                f"{w.slug:<24} {t.window:>6} {t.requests:>9} {t['hit']:>7} {t['wait']:>6} {t['miss']:>7} "
                f"{t['fallthrough']:>7} {t['bypass']:>7} {t['refresh']:>7} {t['upstream_error']:>6} "
                f"{t['cache_error']:>9} {_pct(t.hit_rate):>8} {_pct(t.stampede_rate):>8} "
                f"{_pct(t.dead_write_rate):>8} {t['saved_in']:>9} {t['saved_out']:>9} "
                f"{t['shadow']:>7} {t['would_hit']:>9} {_pct(t.agreement):>9}"
            )
