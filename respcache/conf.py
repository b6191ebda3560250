"""``app_settings``: respcache's settings, read from the ``RESPCACHE`` dict with defaults.

Values are read on first access and dropped on ``setting_changed``, so ``override_settings``
works in tests; unknown names raise ``AttributeError`` instead of silently using a default.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # The django-redis cache alias that holds entries, locks and counters.
    "CACHE_ALIAS": "respcache",
    # "anthropic", "simulated", or "" to choose: anthropic when ANTHROPIC_API_KEY is set.
    "UPSTREAM": "",
    # Largest request body accepted, in bytes (the Messages API's own limit).
    "MAX_BODY_BYTES": 32 * 1024 * 1024,
    # Most JSON values a call body may hold (the body itself, every element and member value),
    # counted on its bytes before it is parsed: parsing and hashing cost per value, and a 32 MiB
    # body can hold 16 million (measured: 5 s of one worker, 3 GB at its peak). At a million the
    # costliest body accepted takes ~0.4 s and ~0.6 GB, one refused ~0.3-0.7 s and ~0.1 GB; no
    # real Messages API body comes near it (a text or an image is one value).
    "MAX_JSON_VALUES": 1_000_000,
    # Deepest nesting allowed within one message or top-level field of a call body (the message
    # or field is level 1): from 1 up to 254, what orjson serialises (and so can be hashed).
    # Below 254, parts with more brackets than this are walked to check it.
    "MAX_JSON_DEPTH": 254,
    # Entries of at least this many bytes are stored compressed, with COMPRESSOR: "lz4" (the
    # default: decodes a 20 KB answer in ~10 us, at about half its size) or "zlib" (about a
    # quarter of the size, ~5x slower to decode; COMPRESS_LEVEL applies). Entries written with
    # either stay readable whatever this says.
    "COMPRESS_MIN_BYTES": 1024,
    "COMPRESSOR": "lz4",
    "COMPRESS_LEVEL": 6,
    # How long a worker keeps its local copy of a workload policy or an API key, in seconds.
    # A policy edit or a revoked key takes effect on every worker within this time.
    "LOCAL_CACHE_SECONDS": 5.0,
    # Upstream call timeout in seconds and SDK retries (callers' SDKs retry on their own).
    "UPSTREAM_TIMEOUT": 300.0,
    "UPSTREAM_MAX_RETRIES": 0,
    # Counter retention: one-minute buckets for 5m/1h/24h windows, one-hour buckets for 7d.
    "MINUTE_BUCKET_RETENTION_SECONDS": 26 * 3600,
    "HOUR_BUCKET_RETENTION_SECONDS": 8 * 24 * 3600,
    # Each process adds its counters up in memory and flushes them to Redis this often, in one
    # pipeline (respcache/tally.py): no per-call counter writes, no hot counter key on a
    # cluster. Readers in another process see a process's counts within this time.
    "COUNTER_FLUSH_SECONDS": 1.0,
    # The call log (logger respcache.calls) is written in batches this often by a thread of each
    # worker, which keeps it cheap per call; 0 writes each line during its call.
    "CALL_LOG_BATCH_SECONDS": 0.1,
    # When set, /metrics requires "Authorization: Bearer <this token>" (Prometheus'
    # `authorization` scrape option). Empty: open on a laptop, refused (403) in production
    # unless METRICS_PUBLIC says it is open on purpose (protected at the load balancer).
    "METRICS_TOKEN": "",
    # True: /metrics is served without a token in production too (system check respcache.E009).
    "METRICS_PUBLIC": False,
    # Prices in USD per million tokens, {"model": {"input": 3.0, "output": 15.0}}, added to (or
    # replacing entries of) DEFAULT_MODEL_PRICES: respcache_replay estimates the cost it saved.
    "MODEL_PRICES": {},
    # Entries (and other payloads kept at rest) are encrypted with AES-256-GCM under the first of
    # these keys, and read with any of them (so keys rotate): each 32 random bytes in URL-safe
    # base64 (manage.py respcache_genkey prints one). Empty: stored readable, as before.
    "ENCRYPTION_KEYS": [],
    # With keys set, entries stored readable (before encryption was turned on) are still read;
    # True makes them misses, so that only what was encrypted under a key can be served.
    "ENCRYPTION_REQUIRED": False,
}

#: Anthropic's list prices (USD per million tokens) of current Claude models, base input and
#: output; a model name ending in a date (-20250929) or -latest is looked up without it.
DEFAULT_MODEL_PRICES: dict[str, dict[str, float]] = {
    "claude-opus-4-5": {"input": 5.0, "output": 25.0},
    "claude-opus-4-1": {"input": 15.0, "output": 75.0},
    "claude-opus-4-0": {"input": 15.0, "output": 75.0},
    "claude-opus-4": {"input": 15.0, "output": 75.0},
    "claude-sonnet-4-5": {"input": 3.0, "output": 15.0},
    "claude-sonnet-4-0": {"input": 3.0, "output": 15.0},
    "claude-sonnet-4": {"input": 3.0, "output": 15.0},
    "claude-3-7-sonnet": {"input": 3.0, "output": 15.0},
    "claude-haiku-4-5": {"input": 1.0, "output": 5.0},
    "claude-3-5-haiku": {"input": 0.8, "output": 4.0},
    "claude-3-haiku": {"input": 0.25, "output": 1.25},
}


class AppSettings:
    def __init__(self, defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        self._cached: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        return getattr(settings, "RESPCACHE", {}) or {}

    def __getattr__(self, name: str) -> Any:
        # Called only for a name not read since the last reload: its value is then kept as an
        # instance attribute, so that later reads are plain attribute reads (~20 ns, not the
        # ~0.5 us of a call to this method), and the hit path reads several.
        if name not in self.defaults:
            raise AttributeError(f"Invalid respcache setting: {name!r}")
        value = self.user_settings.get(name, self.defaults[name])
        self._cached[name] = value
        self.__dict__[name] = value
        return value

    def reload(self) -> None:
        for name in self._cached:
            self.__dict__.pop(name, None)
        self._cached.clear()

    @property
    def upstream_kind(self) -> str:
        kind = (self.UPSTREAM or "").strip().lower()
        if kind:
            return kind
        return "anthropic" if os.environ.get("ANTHROPIC_API_KEY") else "simulated"

    @property
    def silently_simulated(self) -> bool:
        """Whether the simulated upstream answers without having been asked for by name (no
        ``UPSTREAM``, no ``ANTHROPIC_API_KEY``): fine on a laptop, never in production."""
        return not (self.UPSTREAM or "").strip() and self.upstream_kind == "simulated"

    @property
    def production(self) -> bool:
        """Whether the project runs with production settings: its ``PRODUCTION`` setting when it
        has one (project/settings.py: DEBUG off and a real secret key), else DEBUG off."""
        return bool(getattr(settings, "PRODUCTION", not settings.DEBUG))

    @property
    def metrics_closed(self) -> bool:
        """Whether /metrics refuses every scrape: production, no ``METRICS_TOKEN`` to check, and
        not opened on purpose with ``METRICS_PUBLIC``."""
        return self.production and not self.METRICS_TOKEN and not self.METRICS_PUBLIC


app_settings = AppSettings(DEFAULTS)


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "RESPCACHE":
        app_settings.reload()


setting_changed.connect(_reload)
