"""The Messages API compatible endpoints (messages, streamed or not, and count_tokens), and the
handler that renders every error as Anthropic's."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    StreamingHttpResponse,
    UnreadablePostError,
)
from rest_framework import exceptions as drf_exceptions
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from respcache import selectors
from respcache.api.authentication import ApiKeyAuthentication
from respcache.api.observability import CallTelemetryMixin
from respcache.api.parsers import MessageBody, MessageBodyParser, parse_message_body, too_large
from respcache.api.schema import count_tokens_schema, messages_create_schema
from respcache.conf import app_settings
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
            if isinstance(exc, drf_exceptions.Throttled) and exc.wait is not None:
                headers["Retry-After"] = str(int(exc.wait))
            return error_response(status, error_type, str(getattr(exc, "detail", exc)), headers)
    logger.exception("respcache: unexpected error", exc_info=exc)
    return error_response(500, "api_error", "Internal server error.")


class PassthroughRenderer(BaseRenderer):
    """Views here return finished HttpResponses; any Accept header is fine."""

    media_type = "*/*"
    format = "json"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return data if isinstance(data, bytes) else b""


def cache_directives(value: str) -> set[str]:
    return {part.split("=", 1)[0].strip().lower() for part in value.split(",") if part.strip()}


def validate_model_and_messages(data: dict[str, Any]) -> None:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: field required (a non-empty string)." if model is None else "model: must be a string.")
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


class _FixedNegotiation:
    """These views return finished bytes: DRF's content negotiation would only cost time."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: list[Any], format_suffix: Any = None) -> Any:
        return (renderers[0], renderers[0].media_type)


class MessagesView(CallTelemetryMixin, APIView):
    """``POST /w/<workload>/v1/messages``: the Messages API, answered through the cache.

    POST, the hit path, is dispatched without DRF's request wrapping (see ``dispatch``); DRF
    still describes it (schema, parser, authentication below) and answers every other method.
    """

    authentication_classes = [ApiKeyAuthentication]
    permission_classes: list[Any] = []
    parser_classes = [MessageBodyParser]
    renderer_classes = [PassthroughRenderer]
    throttle_classes: list[Any] = []
    content_negotiation_class = _FixedNegotiation

    #: The caller's grant, once authenticated (for check_workload and the call's log line).
    grant: selectors.Grant | None = None

    def get_exception_handler(self) -> Any:
        return anthropic_exception_handler

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """POST runs the call directly on Django's request: authenticate, serve, render any error
        in Anthropic's format, record the call. It is what APIView.dispatch would do for this
        view, which has no permissions, throttles, versioning or content negotiation, minus the
        Request wrapper and per-request class instantiation that cost a hit a tenth of its CPU
        (bench/README: "hit ... CPU per request"). Other methods (405, OPTIONS) go through DRF.
        """
        if request.method != "POST":
            return super().dispatch(request, *args, **kwargs)
        self.args, self.kwargs, self.request = args, kwargs, request
        self._call_started = time.perf_counter()
        try:
            self.grant = _AUTHENTICATION.authenticate_request(request)
            response = self.post(request, **kwargs)
        except Exception as exc:  # rendered like DRF's handler would: never a bare 500
            response = anthropic_exception_handler(exc, {"view": self, "request": request})
        self.record_call(request, response, after_close=True)
        return response

    def check_workload(self, workload: str) -> selectors.Policy:
        policy = selectors.workload_policy(workload)
        if policy is None:
            raise WorkloadNotFound(f"Unknown workload: {workload!r}.")
        grant = self.grant
        if grant is None or policy.slug not in grant.workloads:
            raise PermissionDenied(f"This API key may not call workload {workload!r}.")
        return policy

    def read_body(self, request: HttpRequest) -> MessageBody:
        limit = app_settings.MAX_BODY_BYTES
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            raise too_large()  # refuse before reading a byte
        # request.read, not request.body: the limit here is MAX_BODY_BYTES, not Django's
        # DATA_UPLOAD_MAX_MEMORY_SIZE (form uploads), and a body that lies about its length
        # is cut at limit + 1 bytes.
        try:
            raw = request.read(limit + 1)
        except (UnreadablePostError, OSError) as exc:  # the client went away mid-body
            raise InvalidRequest(f"Request body could not be read: {exc}") from exc
        return parse_message_body(raw)

    def serve(self, request: HttpRequest, workload: str, validate: Any, service: Any) -> HttpResponseBase:
        """Check, validate, call one service with the request's cache directives, respond."""
        policy = self.check_workload(workload)
        body = self.read_body(request)
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
        )
        self.call_result = result  # for the call's log line and span (CallTelemetryMixin)
        return message_response(result)

    @messages_create_schema()
    def post(self, request: HttpRequest, workload: str) -> HttpResponseBase:
        return self.serve(request, workload, validate_message_fields, None)


class CountTokensView(MessagesView):
    """``POST /w/<workload>/v1/messages/count_tokens``: token counts, cached in their own key space."""

    @count_tokens_schema()
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
    return response
