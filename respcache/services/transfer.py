"""Export a workload's live entries as JSON Lines, and import them, byte for byte.

The file (format version 1) is a header line, one line per entry, and an end line::

    {"format": "respcache-export", "version": 1, "workload": "intents", "key_version": 3,
     "upstream": "anthropic", "exported_at": 1767225600.0}
    {"fingerprint": "<64 hex>", "ttl_ms": 81234567, "stored_at": 1767225000.5,
     "model": "claude-sonnet-4-5-20250929", "meta": {"in": "12", ...}, "answer": "<Message JSON>"}
    {"end": true, "entries": 1}

``answer`` is the stored Message's bytes as a JSON string (``answer_base64`` instead when they are
not UTF-8), so the answer served after an import is the one served before, byte for byte.
``meta`` holds every field of the entry's meta hash but its bookkeeping (read count, expiry
bucket keys); values that are not UTF-8 go in ``meta_base64``. The end line tells a complete
file from a truncated one. An import validates the whole file before it writes anything.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from respcache import store
from respcache.exceptions import InvalidRequest
from respcache.models import Workload
from respcache.store import fields, transfer

FORMAT = "respcache-export"
FORMAT_VERSION = 1
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
#: Entries written per MULTI/EXEC on import.
BATCH = 500


class ImportRefused(InvalidRequest):
    """The file is not a complete, well-formed export: nothing was imported."""


def _text_or_base64(values: dict[str, bytes]) -> tuple[dict[str, str], dict[str, str]]:
    text, binary = {}, {}
    for name, value in sorted(values.items()):
        try:
            text[name] = value.decode()
        except UnicodeDecodeError:
            binary[name] = base64.b64encode(value).decode()
    return text, binary


def export_lines(workload: Workload, *, summary: dict[str, int] | None = None) -> Iterator[bytes]:
    """The export file of ``workload``'s live entries (current key version, configured key
    space), line by line, each ending with a newline. ``summary`` receives ``entries`` and
    ``unreadable`` (records this release cannot decode, left out)."""
    upstream = store.key_space()
    version = store.current_version(workload.slug, workload.key_version)
    counts = summary if summary is not None else {}
    counts.update(entries=0, unreadable=0)
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "workload": workload.slug,
        "key_version": version,
        "upstream": upstream,
        "exported_at": time.time(),
    }
    yield orjson.dumps(header) + b"\n"
    for stored in transfer.iter_stored_entries(workload.slug, version, upstream):
        entry = store.decode_record(stored.record)
        if entry is None:
            counts["unreadable"] += 1
            continue
        meta, meta_binary = _text_or_base64(stored.meta)
        line: dict[str, Any] = {
            "fingerprint": stored.fingerprint,
            "ttl_ms": stored.ttl_ms,
            "stored_at": entry.stored_at,
            "model": entry.model,
            "meta": meta,
        }
        if meta_binary:
            line["meta_base64"] = meta_binary
        try:
            line["answer"] = entry.message.decode()
        except UnicodeDecodeError:
            line["answer_base64"] = base64.b64encode(entry.message).decode()
        counts["entries"] += 1
        yield orjson.dumps(line) + b"\n"
    yield orjson.dumps({"end": True, "entries": counts["entries"]}) + b"\n"


@dataclass(frozen=True)
class ImportedEntry:
    fingerprint: str
    message: bytes
    stored_at: float
    model: str
    meta: dict[str, bytes]
    ttl_ms: int | None


def _refuse(number: int, reason: str) -> ImportRefused:
    return ImportRefused(f"line {number}: {reason}; nothing was imported")


def _check_header(line: Any, upstream: str) -> None:
    if not isinstance(line, dict) or line.get("format") != FORMAT:
        raise _refuse(1, f'not an export header (expected {{"format": "{FORMAT}", ...}})')
    if line.get("version") != FORMAT_VERSION:
        raise _refuse(1, f"format version {line.get('version')!r} (this release reads {FORMAT_VERSION})")
    if line.get("upstream", upstream) != upstream:
        raise _refuse(
            1, f"the entries are {line.get('upstream')!r} answers, and this service answers from {upstream!r}"
        )


def _meta_values(line: dict[str, Any]) -> dict[str, bytes]:
    meta, binary = line.get("meta", {}), line.get("meta_base64", {})
    if not isinstance(meta, dict) or not isinstance(binary, dict):
        raise ValueError("meta and meta_base64 must be objects")
    values: dict[str, bytes] = {}
    for name, value in meta.items():
        if not isinstance(value, str):
            raise ValueError(f"meta field {name!r} must be a string")
        values[name] = value.encode()
    for name, value in binary.items():
        if not isinstance(value, str):
            raise ValueError(f"meta_base64 field {name!r} must be a string")
        values[name] = base64.b64decode(value, validate=True)
    return {k: v for k, v in values.items() if k not in transfer.BOOKKEEPING_FIELDS}


def _answer(line: dict[str, Any]) -> bytes:
    if ("answer" in line) == ("answer_base64" in line):
        raise ValueError("exactly one of answer and answer_base64 is required")
    if "answer" in line:
        if not isinstance(line["answer"], str):
            raise ValueError("answer must be a string")
        message = line["answer"].encode()
    else:
        message = base64.b64decode(line["answer_base64"], validate=True)
    orjson.loads(message)  # an answer is a JSON document, or the line is damaged
    return message


def _entry(line: Any) -> ImportedEntry:
    if not isinstance(line, dict):
        raise ValueError("not a JSON object")
    fingerprint = line.get("fingerprint")
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError("fingerprint must be 64 lowercase hex digits")
    ttl_ms, stored_at, model = line.get("ttl_ms"), line.get("stored_at"), line.get("model", "")
    if ttl_ms is not None and (isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms <= 0):
        raise ValueError("ttl_ms must be a positive integer or null")
    if isinstance(stored_at, bool) or not isinstance(stored_at, int | float):
        raise ValueError("stored_at must be a number")
    if not isinstance(model, str):
        raise ValueError("model must be a string")
    return ImportedEntry(fingerprint, _answer(line), float(stored_at), model, _meta_values(line), ttl_ms)


def parse_export(lines: Iterable[bytes]) -> list[ImportedEntry]:
    """Every entry of an export file, or ImportRefused naming the first bad line: a line that
    is not JSON or not an entry, a repeated fingerprint, anything after the end line, or no end
    line at all (a truncated file)."""
    upstream = store.key_space()
    entries: list[ImportedEntry] = []
    first_seen: dict[str, int] = {}
    ended = False
    number = 0
    for number, raw in enumerate(lines, start=1):
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _refuse(number, f"not JSON ({exc})") from exc
        if number == 1:
            _check_header(line, upstream)
            continue
        if ended:
            raise _refuse(number, "a line after the end line")
        if isinstance(line, dict) and line.get("end") is True:
            if line.get("entries") != len(entries):
                raise _refuse(
                    number, f"the end line counts {line.get('entries')!r} entries, the file has {len(entries)}"
                )
            ended = True
            continue
        try:
            entry = _entry(line)
        except (ValueError, binascii.Error, orjson.JSONDecodeError) as exc:
            raise _refuse(number, str(exc)) from exc
        if entry.fingerprint in first_seen:
            raise _refuse(number, f"fingerprint repeated (first on line {first_seen[entry.fingerprint]})")
        first_seen[entry.fingerprint] = number
        entries.append(entry)
    if number == 0:
        raise _refuse(1, "the file is empty")
    if not ended:
        raise _refuse(number, "the file ends without its end line (truncated?)")
    return entries


def import_entries(
    workload: Workload, entries: list[ImportedEntry], *, ttl_seconds: int | None = None, skip_existing: bool = False
) -> dict[str, int]:
    """Store ``entries`` under ``workload``'s current key version in the configured key space,
    re-encoded by ``store.encode_record``, with their TTL left (or ``ttl_seconds``; the
    workload's TTL for an entry exported without one). Counts nothing (no ``written``).
    Returns ``imported`` and ``skipped`` (present already, with ``skip_existing``)."""
    upstream = store.key_space()
    version = store.current_version(workload.slug, workload.key_version)
    imported = skipped = 0
    for start in range(0, len(entries), BATCH):
        batch = entries[start : start + BATCH]
        if skip_existing:
            present = transfer.existing(workload.slug, version, upstream, [e.fingerprint for e in batch])
            skipped += len(present)
            batch = [e for e in batch if e.fingerprint not in present]
        stored = []
        for entry in batch:
            record = store.encode_record(entry.message, stored_at=entry.stored_at, model=entry.model)
            ttl_ms = ttl_seconds * 1000 if ttl_seconds else entry.ttl_ms or workload.ttl_seconds * 1000
            meta = {**entry.meta, fields.SIZE: str(len(record)).encode()}
            stored.append(transfer.StoredEntry(entry.fingerprint, record, meta, ttl_ms))
        transfer.put_entries(workload.slug, version, upstream, stored)
        imported += len(stored)
    return {"imported": imported, "skipped": skipped}
