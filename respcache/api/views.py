"""The Messages API compatible endpoints (messages, streamed or not, and count_tokens), and the
handler that renders every error as Anthropic's.

The call endpoints are plain Django views; the management API (``api/management.py``) is DRF.
Why: a call is a hit most of the time, and a hit does little besides one Redis read, so DRF's
request cycle (its Request wrapper, per-request authenticator, parser and renderer instances,
content negotiation, response finalisation) is a large share of it. Measured in process (the
WSGI app without a socket, as the CPU rows of ``python -m bench``; 60 rounds of 100 hits each,
in shuffled order, median of the per-round ratios, two runs): the same call as a real DRF view
cost 1.17-1.20x this view's CPU per hit with content negotiation fixed, 1.37-1.40x with DRF's
own; a DRF view was acceptable under 1.03x. So DRF does not serve these endpoints and
REST_FRAMEWORK settings do not apply to them: authentication, the body limit (413), the
error format and the 405 are this module's. drf-spectacular still describes them in the OpenAPI
schema, from ``respcache.api.schema`` (its preprocessing hook ``call_endpoints``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf_exceptions

from respcache import selectors
from respcache.api.authentication import ApiKeyAuthentication
from respcache.api.observability import CallTelemetryMixin
from respcache.api.parsers import read_message_body
from respcache.exceptions import (
    InvalidRequest,
    PermissionDenied,
    RespcacheError,
    WorkloadNotFound,
    error_body,
)
from respcache.services import (
    CachedResult,
    cached_count_tokens,
    cached_message_create,
    cached_message_stream,
)
from respcache.upstream import FORWARDED_HEADERS

logger = logging.getLogger(__name__)

_DRF_ERRORS: list[tuple[type[Exception], int, str]] = [
    (drf_exceptions.NotAuthenticated, 401, "authentication_error"),
    (drf_exceptions.AuthenticationFailed, 401, "authentication_error"),
    (drf_exceptions.PermissionDenied, 403, "permission_error"),
    (drf_exceptions.NotFound, 404, "not_found_error"),
    (Http404, 404, "not_found_error"),
    (drf_exceptions.Throttled, 429, "rate_limit_error"),
    (drf_exceptions.APIException, 400, "invalid_request_error"),
]


def error_response(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(error_body(error_type, message), status=status, content_type="application/json")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def anthropic_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse:
    """Render any exception as ``{"type":"error","error":{...}}`` so SDKs raise their usual classes."""
    if isinstance(exc, RespcacheError):
        response = HttpResponse(exc.body(), status=exc.status_code, content_type="application/json")
        for name, value in exc.headers().items():
            response[name] = value
        return response
    for kind, status, error_type in _DRF_ERRORS:
        if isinstance(exc, kind):
            if isinstance(exc, drf_exceptions.APIException) and kind is drf_exceptions.APIException:
                status = exc.status_code if exc.status_code < 500 else 500
                error_type = "invalid_request_error" if status < 500 else "api_error"
            headers = {}
            # Throttled.__init__ sets ``wait`` (seconds, rounded up); DRF's stubs do not declare it.
            wait: int | None = getattr(exc, "wait", None) if isinstance(exc, drf_exceptions.Throttled) else None
            if wait is not None:
                headers["Retry-After"] = str(int(wait))
            return error_response(status, error_type, str(getattr(exc, "detail", exc)), headers)
    logger.exception("respcache: unexpected error", exc_info=exc)
    return error_response(500, "api_error", "Internal server error.")


def cache_directives(value: str) -> set[str]:
    return {part.split("=", 1)[0].strip().lower() for part in value.split(",") if part.strip()}


def validate_model_and_messages(data: dict[str, Any]) -> None:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "model: field required (a non-empty string)." if model is None else "model: must be a string."
        )
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages: field required (a list)." if messages is None else "messages: must be a list.")


def validate_message_fields(data: dict[str, Any]) -> None:
    """Check what the contract names; everything else is the upstream's to judge."""
    validate_model_and_messages(data)
    max_tokens = data.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: field required (an integer).")
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int | float)
        or (isinstance(max_tokens, float) and not max_tokens.is_integer())
    ):
        raise InvalidRequest("max_tokens: must be an integer.")
    if "stream" in data and not isinstance(data["stream"], bool):
        raise InvalidRequest("stream: must be a boolean.")


_FORWARDED_META = [(name, "HTTP_" + name.upper().replace("-", "_")) for name in FORWARDED_HEADERS]


def forwarded_headers(meta: dict[str, Any]) -> dict[str, str]:
    # Straight from META: building request.headers costs more than the rest of this on a hit.
    return {name: meta[key] for name, key in _FORWARDED_META if key in meta}


_AUTHENTICATION = ApiKeyAuthentication()

#: What the call endpoints answer (OPTIONS lists them); sent with every answer to another method.
ALLOWED_METHODS = "POST, OPTIONS"


class MessagesView(CallTelemetryMixin, View):
    """``POST /w/<workload>/v1/messages``: the Messages API, answered through the cache.

    Every method is authenticated first (a caller without a valid key learns nothing, not even
    which methods exist); then POST calls the service, OPTIONS answers the Allow header alone,
    any other method is a 405. Errors are Anthropic error JSON; every call is recorded.
    """

    #: The caller's grant, once authenticated (for check_workload and the call's log line).
    grant: selectors.Grant | None = None

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Callable[..., HttpResponseBase]:
        # Callers present an API key, never a session cookie: there is no CSRF token to check.
        return csrf_exempt(super().as_view(**initkwargs))

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """Authenticate, answer the method, render any error, record the call."""
        self._call_started = time.perf_counter()
        method = request.method
        response: HttpResponseBase
        try:
            self.grant = _AUTHENTICATION.authenticate_request(request)
            if method == "POST":
                response = self.post(request, **kwargs)
            elif method == "OPTIONS":
                response = self.options(request)
            else:
                response = self.http_method_not_allowed(request)
        except Exception as exc:  # never a bare 500: every error in Anthropic's format
            response = anthropic_exception_handler(exc, {"view": self, "request": request})
        if method != "POST":  # even on a 401, as when DRF answered these methods
            response["Allow"] = ALLOWED_METHODS
        self.record_call(request, response)
        return response

    def options(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = HttpResponse()
        del response["Content-Type"]  # an empty answer: its Allow header says it all
        return response

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # DRF's wording (MethodNotAllowed), which callers have seen from these endpoints.
        return error_response(405, "invalid_request_error", f'Method "{request.method}" not allowed.')

    def check_workload(self, workload: str) -> selectors.Policy:
        policy = selectors.workload_policy(workload)
        if policy is None:
            raise WorkloadNotFound(f"Unknown workload: {workload!r}.")
        grant = self.grant
        if grant is None or policy.slug not in grant.workloads:
            raise PermissionDenied(f"This API key may not call workload {workload!r}.")
        return policy

    def serve(self, request: HttpRequest, workload: str, validate: Any, service: Any) -> HttpResponseBase:
        """Check, validate, call one service with the request's cache directives, respond."""
        policy = self.check_workload(workload)
        body = read_message_body(request)
        validate(body.data)
        if service is None:
            service = cached_message_stream if body.data.get("stream") is True else cached_message_create
        meta = request.META
        directives = cache_directives(meta.get("HTTP_CACHE_CONTROL", ""))
        result = service(
            policy=policy,
            body=body.data,
            raw_body=body.raw,
            beta=meta.get("HTTP_ANTHROPIC_BETA"),
            headers=forwarded_headers(meta),
            no_cache="no-cache" in directives,
            no_store="no-store" in directives,
            explain=meta.get("HTTP_RESPCACHE_EXPLAIN", "").strip() == "1",
        )
        self.call_result = result  # for the call's log line and span (CallTelemetryMixin)
        return message_response(result)

    def post(self, request: HttpRequest, workload: str) -> HttpResponseBase:
        return self.serve(request, workload, validate_message_fields, None)


class CountTokensView(MessagesView):
    """``POST /w/<workload>/v1/messages/count_tokens``: token counts, cached in their own key space."""

    def post(self, request: HttpRequest, workload: str) -> HttpResponseBase:
        return self.serve(request, workload, validate_model_and_messages, cached_count_tokens)


def message_response(result: CachedResult) -> HttpResponseBase:
    response: HttpResponseBase
    if result.stream is not None:
        response = StreamingHttpResponse(result.stream, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # proxies (nginx) pass each event on at once
    else:
        response = HttpResponse(result.body, content_type="application/json")
    response["X-Respcache"] = result.status
    if result.fingerprint:
        response["X-Respcache-Key"] = result.fingerprint
    if result.age is not None:
        response["Age"] = str(result.age)
    if result.miss is not None:
        response["X-Respcache-Miss"] = result.miss
    return response
