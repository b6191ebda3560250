"""``manage.py respcache_replay FILE.jsonl --workload SLUG [--concurrency N] [--json]``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from respcache import selectors
from respcache.management.replay import Replay, Summary

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def _lines(path: str) -> Iterator[bytes]:
    with open(path, "rb") as lines:
        yield from lines


def _counts(summary: Summary) -> str:
    o = summary.outcomes
    return (
        f"hit {o['hit']}, miss {o['miss']}, wait {o['wait']}, errors {len(summary.errors)}, "
        f"bad {len(summary.bad_lines)}"
    )


class Command(BaseCommand):
    help = "Send each line of a JSON Lines file (a Messages API body) through a workload's cache."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", metavar="FILE", help="JSON Lines, one Messages API body a line.")
        parser.add_argument("--workload", required=True, metavar="SLUG")
        parser.add_argument("--concurrency", type=int, default=4, metavar="N", help="Calls at once (default 4).")
        parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        policy = selectors.workload_policy(options["workload"])
        if policy is None:
            raise CommandError(f"unknown workload: {options['workload']}")
        if not 1 <= options["concurrency"] <= 256:
            raise CommandError("--concurrency: from 1 to 256")
        path = options["file"]
        try:
            total = sum(1 for line in _lines(path) if line.strip())  # for the progress bar
            replay = Replay(policy, _lines(path), total, options["concurrency"])
            summary = self._run(replay)
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc}") from exc
        if options["json"]:
            self.stdout.write(json.dumps(summary.as_dict(), indent=2))
        else:
            for line in summary.text():
                self.stdout.write(line)
        if summary.interrupted:
            sys.exit(INTERRUPTED)

    def _run(self, replay: Replay) -> Summary:
        report: Callable[[str], None] = self.stderr.write
        if not self.stderr.isatty():
            return replay.run(report, self._plain_progress(replay.summary.total))
        console = Console(file=cast(IO[str], self.stderr._out), stderr=True)
        columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"))
        with Progress(*columns, TimeRemainingColumn(), console=console, transient=False) as bar:
            task = bar.add_task("", total=replay.summary.total)

            def progress(summary: Summary) -> None:
                bar.update(task, completed=summary.done, description=_counts(summary))

            return replay.run(lambda text: console.print(text, markup=False, highlight=False), progress)

    def _plain_progress(self, total: int) -> Callable[[Summary], None]:
        """A line on stderr every 5 % of the lines (and at the end) when it is not a terminal."""
        step = max(1, total // 20)

        def progress(summary: Summary) -> None:
            if summary.done % step == 0 or summary.done == total:
                self.stderr.write(f"progress: {summary.done}/{total} lines ({_counts(summary)})")

        return progress
