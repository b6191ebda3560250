"""``HttpsOnlyApiMiddleware``: API calls over plain HTTP get a 403, never a redirect.

With ``SECURE_SSL_REDIRECT`` on (the production settings), Django's SecurityMiddleware answers a
plain HTTP request with a 301 to HTTPS. Right for a browser; wrong for an API call: by then the
caller's key has already crossed the network in clear, and clients that follow redirects (the
official SDK, ``curl -L``) send it again. So the call endpoints and the REST API (paths under
``/w/`` and ``/api/``) answer 403 ``permission_error`` in Anthropic's error format instead, which
fails the call at once and tells the caller to fix its base URL. Every other path (the admin)
keeps Django's redirect; ``/healthz`` and ``/metrics`` keep their exemption from it.

Whether a request is HTTPS is Django's ``request.is_secure()``: ``X-Forwarded-Proto`` counts only
when ``SECURE_PROXY_SSL_HEADER`` says to trust it. List this middleware before
``django.middleware.security.SecurityMiddleware``; with ``SECURE_SSL_REDIRECT`` off it removes
itself (Django does not redirect either, and plain HTTP is then the operator's choice).
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from respcache.exceptions import error_body

#: Where respcache's URLs are mounted in the service (``path("", include("respcache.api.urls"))``).
API_PREFIXES = ("/w/", "/api/")

MESSAGE = (
    "Use HTTPS: API calls over plain HTTP are refused, not redirected "
    "(any key this request carried has crossed the network unencrypted)."
)


class HttpsOnlyApiMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        if not settings.SECURE_SSL_REDIRECT:
            raise MiddlewareNotUsed
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if not request.is_secure() and request.path_info.startswith(API_PREFIXES):
            return HttpResponse(error_body("permission_error", MESSAGE), status=403, content_type="application/json")
        return self.get_response(request)
