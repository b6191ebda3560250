"""Caller authentication: a respcache API key as ``Authorization: Bearer`` or ``x-api-key``.

No password is ever checked here: HTTP Basic credentials are refused unread (see
``OptionalApiKeyAuthentication``), so a stranger's request never costs a password hash.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from rest_framework import exceptions as drf_exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from respcache import selectors, services
from respcache.exceptions import AuthenticationFailed


def presented_key(request: Request | HttpRequest) -> str | None:
    """The key from ``x-api-key`` (older SDKs, curl) or ``Authorization: Bearer`` (SDK 2.x)."""
    meta = request.META
    key = meta.get("HTTP_X_API_KEY")
    if key:
        return str(key).strip()
    authorization = str(meta.get("HTTP_AUTHORIZATION", ""))
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


class ApiKeyAuthentication(BaseAuthentication):
    """Authenticates by respcache API key; ``request.auth`` becomes its selectors.Grant."""

    def authenticate(self, request: Request) -> tuple[Any, selectors.Grant] | None:
        return (None, self.authenticate_request(request))

    def authenticate_request(self, request: Request | HttpRequest) -> selectors.Grant:
        """The grant of the request's key; AuthenticationFailed (401) without a valid one."""
        key = presented_key(request)
        if not key:
            raise AuthenticationFailed("Missing API key: send it as 'x-api-key' or 'Authorization: Bearer'.")
        grant = selectors.api_key_grant(key)
        if grant is None:
            raise AuthenticationFailed("Invalid API key.")
        services.api_key_mark_used(grant.key_id)  # throttled: no query on most calls
        return grant

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="respcache"'


class OptionalApiKeyAuthentication(ApiKeyAuthentication):
    """Like ApiKeyAuthentication, but steps aside when no key is presented (for the REST API,
    where staff users may use their admin session instead).

    HTTP Basic credentials are refused at once (401, unread): checking a password costs a
    deliberately slow hash (PBKDF2, a million iterations), even for an unknown user, and a gevent
    worker runs nothing else meanwhile, so a flood of made-up passwords would stall every call
    the worker serves. The management API takes keys and sessions only.
    """

    def authenticate(self, request: Request) -> tuple[Any, selectors.Grant] | None:
        if not presented_key(request):
            scheme = str(request.META.get("HTTP_AUTHORIZATION", "")).partition(" ")[0]
            if scheme.lower() == "basic":
                # DRF's exception, so that the 401 names the scheme to use (WWW-Authenticate).
                raise drf_exceptions.AuthenticationFailed(
                    "HTTP Basic authentication is not accepted: send a respcache API key "
                    "('x-api-key' or 'Authorization: Bearer'), or sign in to the admin."
                )
            return None
        return super().authenticate(request)
