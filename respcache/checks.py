"""System checks: respcache.E001… with hints, run by ``manage.py check`` and at start-up
(``check --deploy`` adds the deployment ones)."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from respcache import sealing
from respcache.conf import app_settings
from respcache.keys import DEFAULT_MAX_DEPTH


@register(Tags.caches)
def check_cache_alias(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    alias = app_settings.CACHE_ALIAS
    caches = getattr(settings, "CACHES", {})
    if alias not in caches:
        return [
            Error(
                f"The cache alias {alias!r} is not in CACHES.",
                hint="Add a django-redis cache under that alias or set RESPCACHE['CACHE_ALIAS'].",
                id="respcache.E001",
            )
        ]
    if not caches[alias].get("BACKEND", "").startswith("django_redis."):
        return [
            Error(
                f"The cache alias {alias!r} is not a django-redis backend.",
                hint="respcache needs django_redis.cache.RedisCache: it uses Lua scripts and Pub/Sub.",
                id="respcache.E002",
            )
        ]
    prefix = str(caches[alias].get("KEY_PREFIX", ""))
    if "{" in prefix or "}" in prefix:
        return [
            Error(
                f"The cache alias {alias!r} has a KEY_PREFIX with a brace: {prefix!r}.",
                hint="Redis Cluster hashes the first {...} of a key name: respcache's keys carry their own "
                "hash tags, which a brace in the prefix would replace. Remove the braces from KEY_PREFIX.",
                id="respcache.E011",
            )
        ]
    if caches[alias].get("KEY_FUNCTION"):
        return [
            Error(
                f"The cache alias {alias!r} sets KEY_FUNCTION.",
                hint="respcache builds its keys as prefix:version:key inside Lua scripts: remove "
                "KEY_FUNCTION (KEY_PREFIX and VERSION are fine) or give respcache its own alias.",
                id="respcache.E005",
            )
        ]
    return []


@register()
def check_upstream(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    kind = app_settings.upstream_kind
    if kind not in {"anthropic", "simulated"}:
        return [
            Error(
                f"RESPCACHE_UPSTREAM is {kind!r}.",
                hint="Use 'anthropic' or 'simulated'.",
                id="respcache.E003",
            )
        ]
    if kind == "anthropic" and not os.environ.get("ANTHROPIC_API_KEY"):
        return [
            Error(
                "RESPCACHE_UPSTREAM is 'anthropic' but ANTHROPIC_API_KEY is unset.",
                hint="Set ANTHROPIC_API_KEY (the server's key; callers never send it).",
                id="respcache.E004",
            )
        ]
    return []


@register()
def check_compressor(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    compressor = app_settings.COMPRESSOR
    if compressor not in {"lz4", "zlib"}:
        return [
            Error(
                f"RESPCACHE['COMPRESSOR'] is {compressor!r}.",
                hint="Use 'lz4' (fast to read, the default) or 'zlib' (smaller); entries written "
                "with either stay readable.",
                id="respcache.E006",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_upstream_chosen(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """A deployment answers from the simulated upstream only when told to by name."""
    if app_settings.silently_simulated:
        return [
            Error(
                "The simulated upstream would answer every call: ANTHROPIC_API_KEY and RESPCACHE_UPSTREAM are unset.",
                hint="Set ANTHROPIC_API_KEY (the server's key for the Messages API), or "
                "RESPCACHE_UPSTREAM=simulated to serve simulated answers on purpose. With the "
                "production settings on, the service refuses to start without one of them.",
                id="respcache.E007",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_metrics_protected(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """A deployment's /metrics needs its token, or is opened without one by name."""
    if app_settings.METRICS_TOKEN or app_settings.METRICS_PUBLIC:
        return []
    return [
        Error(
            "/metrics has no token: RESPCACHE_METRICS_TOKEN is unset and RESPCACHE_METRICS_PUBLIC is off.",
            hint="Set RESPCACHE_METRICS_TOKEN (Prometheus sends it with its `authorization` scrape "
            "option), or RESPCACHE_METRICS_PUBLIC=1 to serve /metrics without one on purpose (behind "
            "a load balancer that guards it). With the production settings on, /metrics answers 403 "
            "until one of them is set.",
            id="respcache.E009",
        )
    ]


def _is_int(value: Any, low: int, high: float) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@register()
def check_body_limits(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    values, depth = app_settings.MAX_JSON_VALUES, app_settings.MAX_JSON_DEPTH
    if _is_int(values, 1, float("inf")) and _is_int(depth, 1, DEFAULT_MAX_DEPTH):
        return []
    return [
        Error(
            f"RESPCACHE['MAX_JSON_VALUES'] is {values!r} and RESPCACHE['MAX_JSON_DEPTH'] is {depth!r}.",
            hint=f"MAX_JSON_VALUES: an integer of at least 1; MAX_JSON_DEPTH: an integer from 1 to "
            f"{DEFAULT_MAX_DEPTH} (what orjson serialises, and so what can be hashed).",
            id="respcache.E008",
        )
    ]


@register(Tags.security)
def check_encryption_keys(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    try:
        sealing.keyring()
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint="Generate a key with manage.py respcache_genkey; separate keys with commas in "
                "RESPCACHE_ENCRYPTION_KEYS.",
                id="respcache.E010",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_encrypted_at_rest(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Answers are data: a deployment says whether Redis holds them readable."""
    if app_settings.ENCRYPTION_KEYS:
        return []
    return [
        Warning(
            "Cached answers are stored readable in Redis: ENCRYPTION_KEYS is empty.",
            hint="Set RESPCACHE_ENCRYPTION_KEYS to a key from manage.py respcache_genkey (AES-256-GCM, "
            "~1% of a hit's CPU), or silence respcache.W001 if Redis and its disks are protected otherwise.",
            id="respcache.W001",
        )
    ]
