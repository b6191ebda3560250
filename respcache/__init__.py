"""respcache: an exact-match response cache for the Anthropic Messages API, as a Django app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "CacheUnavailable",
    "CachedResult",
    "DatabaseUnavailable",
    "InvalidRequest",
    "PermissionDenied",
    "RequestTooLarge",
    "RespcacheError",
    "UpstreamError",
    "UpstreamUnavailable",
    "WorkloadNotFound",
    "__version__",
    "app_settings",
    "cached_count_tokens",
    "cached_message_create",
    "cached_message_stream",
]

if TYPE_CHECKING:  # pragma: no cover
    from respcache.conf import app_settings
    from respcache.exceptions import (
        AuthenticationFailed,
        CacheUnavailable,
        DatabaseUnavailable,
        InvalidRequest,
        PermissionDenied,
        RequestTooLarge,
        RespcacheError,
        UpstreamError,
        UpstreamUnavailable,
        WorkloadNotFound,
    )
    from respcache.services import (
        CachedResult,
        cached_count_tokens,
        cached_message_create,
        cached_message_stream,
    )


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the package (e.g. from INSTALLED_APPS) does not import models
    # before the app registry is ready.
    if name in {"CachedResult", "cached_count_tokens", "cached_message_create", "cached_message_stream"}:
        from respcache import services

        return getattr(services, name)
    if name == "app_settings":
        from respcache.conf import app_settings

        return app_settings
    if name in __all__:
        from respcache import exceptions

        return getattr(exceptions, name)
    raise AttributeError(f"module 'respcache' has no attribute {name!r}")
