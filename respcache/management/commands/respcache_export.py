"""``manage.py respcache_export SLUG [-o FILE]``: the workload's live entries as JSON Lines."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from django.core.management.base import BaseCommand, CommandError, CommandParser

from respcache import selectors
from respcache.exceptions import CacheUnavailable
from respcache.services import transfer


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class Command(BaseCommand):
    help = "Write a workload's live entries (current key version) as JSON Lines, answers byte for byte."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("-o", "--output", metavar="FILE", help="Write to FILE instead of standard output.")

    def handle(self, *args: Any, **options: Any) -> None:
        workload = selectors.workload_get(options["slug"])
        if workload is None:
            raise CommandError(f"unknown workload: {options['slug']}")
        counts: dict[str, int] = {}
        path = options["output"]
        try:
            if path:
                with open(path, "wb") as out:
                    self._write(out, transfer.export_lines(workload, summary=counts))
            else:
                self._write(self._stdout_bytes(), transfer.export_lines(workload, summary=counts))
        except CacheUnavailable as exc:
            raise CommandError(f"Redis is unavailable: {exc}") from exc
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc}") from exc
        unreadable = f", {counts['unreadable']} unreadable left out" if counts["unreadable"] else ""
        self.stderr.write(f"exported {counts['entries']} entries of {workload.slug}{unreadable}")

    def _stdout_bytes(self) -> Sink:
        out = self.stdout._out  # Django's OutputWrapper around the real stream
        buffer: Sink | None = getattr(out, "buffer", None)
        return buffer if buffer is not None else _TextSink(out)

    @staticmethod
    def _write(out: Sink, lines: Iterable[bytes]) -> None:
        for line in lines:
            out.write(line)
        out.flush()


class _TextSink:
    """A text stream (call_command's StringIO) taking bytes: decoded, as the lines are UTF-8."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def write(self, data: bytes) -> int:
        return int(self.out.write(data.decode()))

    def flush(self) -> None:
        self.out.flush()
