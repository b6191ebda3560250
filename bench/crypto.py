"""Encryption at rest's cost per hit, in process: ``decode_record`` of one stored answer (what
the hit path does with the record Redis returns: check its header, decrypt, decompress, split the
meta from the Message bytes), with ENCRYPTION_KEYS and without, alternating rounds.

Two rows per size: the decode with a key against the decode without (the codec's own ratio: the
decode is a small part of a hit, so no target), and a hit's CPU with a key (the ``cpu_rows``
measure of this run plus the decode's difference) against without: the target, at most 5% more.
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
from django.conf import settings
from django.test import override_settings

from bench.report import Row, ratio
from bench.upstream import WORDS
from respcache import sealing, store


def answer(size: int, seed: int = 0) -> bytes:
    """A Messages API answer of about ``size`` bytes, its text made of words (so it compresses
    as prose does)."""
    rng = random.Random(seed)
    text = " ".join(rng.choices(WORDS, k=max(1, size // 7)))[: max(1, size - 300)]
    message = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 400, "output_tokens": size // 4},
    }
    return orjson.dumps(message)


def keys(*texts: str) -> Any:
    return override_settings(RESPCACHE={**getattr(settings, "RESPCACHE", {}), "ENCRYPTION_KEYS": list(texts)})


def decode_cpu(record: bytes, n: int) -> float:
    """CPU seconds per ``decode_record`` of ``record`` (the settings in force)."""
    decode = store.decode_record
    if decode(record) is None:
        raise RuntimeError("the bench record does not decode")
    started = time.process_time()
    for _ in range(n):
        decode(record)
    return (time.process_time() - started) / n


def rows(sizes: dict[str, int], n: int, rounds: int, hit_cpu: dict[str, dict[str, float]]) -> tuple[list[Row], Any]:
    """The rows, and the raw numbers: per size, seconds per decode plain and encrypted."""
    key = sealing.generate_key()
    out: list[Row] = []
    raw: dict[str, Any] = {}
    for label, size in sizes.items():
        message = answer(size)
        with keys():
            plain_record = store.encode_record(message, stored_at=time.time(), model="bench")
        with keys(key):
            sealed_record = store.encode_record(message, stored_at=time.time(), model="bench")
        spent = {"plain": 0.0, "sealed": 0.0}
        for round_ in range(rounds + 1):  # round 0 warms both
            for name in ("plain", "sealed") if round_ % 2 else ("sealed", "plain"):
                with keys(key) if name == "sealed" else keys():
                    used = decode_cpu(sealed_record if name == "sealed" else plain_record, n)
                if round_:
                    spent[name] += used / rounds
        plain, sealed = spent["plain"], spent["sealed"]
        out.append(Row.compare(f"hit {label}: record decode CPU, encrypted", sealed, "s", plain, "unencrypted"))
        raw[label] = {"message_bytes": len(message), "decode_plain": plain, "decode_sealed": sealed}
        hit = hit_cpu.get(label, {}).get("hit")
        if hit:  # the hit's CPU measured in this run (unencrypted) plus what the key adds to it
            r = ratio(hit + sealed - plain, hit)
            out.append(
                Row.compare(
                    f"hit {label}: CPU per hit, encrypted (hit + decode difference)",
                    hit + sealed - plain,
                    "s",
                    hit,
                    "unencrypted",
                    target="≤ 1.05×",
                    ok=r is not None and r <= 1.05,
                )
            )
            raw[label]["hit_cpu"] = hit
    return out, raw
