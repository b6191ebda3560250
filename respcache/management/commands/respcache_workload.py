"""``manage.py respcache_workload SLUG [options]``: create or update a workload and print it."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from respcache import services


def describe(workload: Any) -> str:
    return (
        f"workload {workload.slug}: enabled={workload.enabled} ttl={workload.ttl_seconds}s "
        f"key_version={workload.key_version} strict={workload.strict} "
        f"lock_ttl={workload.lock_ttl:g}s wait_max={workload.wait_max:g}s "
        f"max_upstream_per_minute={workload.max_upstream_per_minute} "
        f"max_tokens_per_day={workload.max_tokens_per_day} shadow={workload.shadow} "
        f"drift_threshold={workload.drift_threshold_points}"
    )


class Command(BaseCommand):
    help = "Create or update a workload's cache policy, and print it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--ttl", type=int, metavar="SECONDS", help="How long answers are served.")
        enabled = parser.add_mutually_exclusive_group()
        enabled.add_argument("--enable", dest="enabled", action="store_true", default=None)
        enabled.add_argument("--disable", dest="enabled", action="store_false")
        strict = parser.add_mutually_exclusive_group()
        strict.add_argument(
            "--strict",
            dest="strict",
            action="store_true",
            default=None,
            help="Cache only requests that set temperature to 0.",
        )
        strict.add_argument("--no-strict", dest="strict", action="store_false")
        parser.add_argument("--lock-ttl", type=float, metavar="SECONDS", help="Stampede lock lifetime.")
        parser.add_argument(
            "--wait-max", type=float, metavar="SECONDS", help="How long a caller waits for another's answer."
        )
        parser.add_argument(
            "--max-upstream-per-minute",
            type=int,
            metavar="N",
            help="Budget: upstream calls per UTC minute, beyond which calls that would go upstream get 429 (0: none).",
        )
        parser.add_argument(
            "--max-tokens-per-day",
            type=int,
            metavar="N",
            help="Budget: upstream tokens (input + output) per UTC day, beyond which calls that would go "
            "upstream get 429 (0: none).",
        )
        shadow = parser.add_mutually_exclusive_group()
        shadow.add_argument(
            "--shadow",
            dest="shadow",
            action="store_true",
            default=None,
            help="Shadow mode: every call gets a fresh answer; record would-be hits and agreement.",
        )
        shadow.add_argument("--no-shadow", dest="shadow", action="store_false")
        parser.add_argument(
            "--drift-threshold",
            type=int,
            metavar="POINTS",
            help="Alert when the last hour's hit rate is this many points below the 24 h before (1-100).",
        )
        parser.add_argument("--description")

    def handle(self, *args: Any, **options: Any) -> None:
        fields = {
            "ttl_seconds": options["ttl"],
            "enabled": options["enabled"],
            "strict": options["strict"],
            "lock_ttl": options["lock_ttl"],
            "wait_max": options["wait_max"],
            "max_upstream_per_minute": options["max_upstream_per_minute"],
            "max_tokens_per_day": options["max_tokens_per_day"],
            "shadow": options["shadow"],
            "drift_threshold_points": options["drift_threshold"],
            "description": options["description"],
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        try:
            workload, created = services.workload_upsert(slug=options["slug"], actor="command", **fields)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        self.stdout.write(("created " if created else "updated ") + describe(workload))
