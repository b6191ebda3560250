"""Key building: respcache.keys against the article's recipe, on requests of a given size."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench.upstream import WORDS
from respcache.keys import request_fingerprint


def article_key(body: dict[str, Any]) -> str:
    """The article's recipe: ``json.dumps(sort_keys=True, separators=(",", ":"))`` + SHA-256."""
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def respcache_key(body: dict[str, Any]) -> str:
    return request_fingerprint(body)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words))


def make_request(size: int, seed: int = 0) -> dict[str, Any]:
    """An agent-style Messages request of about ``size`` bytes of JSON: a cached system prompt,
    tools with schemas, then turns of text, tool calls and tool results until it is big enough."""
    rng = random.Random(seed)
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 1024,
        "temperature": 0.0,
        "system": [{"type": "text", "text": _text(rng, 25), "cache_control": {"type": "ephemeral"}}],
        "tools": [
            {
                "name": f"tool_{i}",
                "description": _text(rng, 12),
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string", "description": _text(rng, 6)},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 50},
                        "score": {"type": "number", "minimum": 0.0, "maximum": 1.0},
                    },
                    "required": ["query"],
                },
            }
            for i in range(3 if size >= 8192 else 0)
        ],
        "messages": [{"role": "user", "content": _text(rng, 40)}],
    }
    turn = 1
    while len(orjson.dumps(body)) < size:
        turn += 1
        messages = body["messages"]
        if turn % 3 == 1:
            messages.append({"role": "user", "content": _text(rng, rng.randint(20, 200))})
        elif turn % 3 == 2:
            messages.append(
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": _text(rng, rng.randint(10, 80))},
                        {
                            "type": "tool_use",
                            "id": f"toolu_{turn:06d}",
                            "name": "tool_1",
                            "input": {
                                "query": _text(rng, 4),
                                "limit": rng.randint(1, 50),
                                "score": rng.random(),
                            },
                        },
                    ],
                }
            )
        else:
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": f"toolu_{turn - 1:06d}",
                            "content": _text(rng, rng.randint(40, 400)),
                        },
                    ],
                }
            )
    if body["messages"][-1]["role"] != "user":
        body["messages"].append({"role": "user", "content": "continue"})
    return body


def throughput(
    fn: Callable[[dict[str, Any]], str], body: dict[str, Any], *, min_time: float, repeats: int = 3
) -> float:
    """Best MB/s of ``fn`` over ``repeats`` runs of at least ``min_time`` seconds each."""
    size = len(orjson.dumps(body))
    best = 0.0
    for _ in range(repeats):
        count, started = 0, time.perf_counter()
        while True:
            fn(body)
            count += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_time:
                break
        best = max(best, size * count / elapsed / 1e6)
    return best
