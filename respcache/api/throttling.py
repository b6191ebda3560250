"""Rate limits of the management API, counted in respcache's Redis so that every worker and machine
shares them: strangers per client IP (``management_anon``), staff users and API keys each on their
own (``management_user``).

The rates are DRF's ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` for those two scopes
(``"60/minute"``, ``"600/minute"`` when unset; ``None`` turns a scope off); a request over its
rate gets 429 ``rate_limit_error`` with ``Retry-After``. The client IP is DRF's: ``REMOTE_ADDR``,
or with ``NUM_PROXIES`` set, the address that many proxies back in ``X-Forwarded-For``.

DRF's throttles keep their history in Django's default cache, which here is each process's own
memory: a stranger spreading a flood over workers and machines would get the rate once per
process. These keep it in the django-redis alias ``CACHE_ALIAS`` instead. While Redis is
unreachable they let requests through (fail-open, as the rest of respcache).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache import caches
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from respcache import store
from respcache.api.permissions import grant_of
from respcache.conf import app_settings
from respcache.exceptions import CacheUnavailable

logger = logging.getLogger(__name__)

#: The rate of each scope when ``DEFAULT_THROTTLE_RATES`` does not name it (an embedding project's
#: settings need not). Nobody legitimate calls anonymously (every request then gets a 401), so
#: strangers get little; a dashboard polling every workload's stats stays well below the other.
DEFAULT_RATES: dict[str, str | None] = {"management_anon": "60/minute", "management_user": "600/minute"}


class RedisRateThrottle(SimpleRateThrottle):
    """DRF's SimpleRateThrottle with its history in respcache's Redis and its rate read per
    request (DRF binds both once, at import: ``override_settings`` would not reach them)."""

    def __init__(self) -> None:
        self.cache = caches[app_settings.CACHE_ALIAS]
        super().__init__()

    def get_rate(self) -> str | None:
        scope = str(self.scope)
        rates = api_settings.DEFAULT_THROTTLE_RATES  # typed loosely by DRF's stubs: a str or None
        rate = rates[scope] if scope in rates else DEFAULT_RATES[scope]
        return None if rate is None else str(rate)

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            with store.guarded():  # skips Redis at once while it is known to be down
                return bool(super().allow_request(request, view))
        except CacheUnavailable as exc:
            logger.debug("respcache: management API request not throttled, Redis is unavailable (%s)", exc)
            return True


def _caller(request: Request) -> str | None:
    """``key:<id>`` or ``user:<id>`` for an authenticated request, None for a stranger's."""
    grant = grant_of(request)
    if grant is not None:
        return f"key:{grant.key_id}"
    user = request.user
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return None


class AnonymousRateThrottle(RedisRateThrottle):
    """Requests without valid credentials, failed ones included, per client IP."""

    scope = "management_anon"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if _caller(request) is not None:
            return None
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class CallerRateThrottle(RedisRateThrottle):
    """Authenticated requests, per staff user or per API key."""

    scope = "management_user"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        caller = _caller(request)
        if caller is None:
            return None
        return self.cache_format % {"scope": self.scope, "ident": caller}
