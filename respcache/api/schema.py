"""The OpenAPI description of respcache's endpoints, for drf-spectacular: how the API-key
authentication appears, and the call endpoints, which are plain Django views.

drf-spectacular describes DRF views only, and the call endpoints are not DRF views (why: the
docstring of ``respcache.api.views``). ``call_endpoints``, a preprocessing hook, finds them in
the URLconf wherever they are mounted and hands drf-spectacular a description of each: a DRF
view that is never routed and never serves, whose ``post`` carries the ``extend_schema`` below.
A project serving the schema lists the hook in its settings::

    SPECTACULAR_SETTINGS = {"PREPROCESSING_HOOKS": ["respcache.api.schema.call_endpoints"], ...}

Imported by ``RespcacheConfig.ready()`` when drf-spectacular is installed (the authentication
extensions register themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar

from django.urls import URLPattern, URLResolver
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.generators import EndpointEnumerator
from rest_framework.request import Request
from rest_framework.views import APIView

from respcache.api.authentication import ApiKeyAuthentication
from respcache.api.views import CountTokensView, MessagesView

F = TypeVar("F", bound=Callable[..., Any])


def _key_schemes(purpose: str) -> list[dict[str, Any]]:
    return [
        {"type": "apiKey", "in": "header", "name": "x-api-key", "description": f"A respcache API key {purpose}."},
        {
            "type": "http",
            "scheme": "bearer",
            "description": f"The same key as a bearer token (what the SDK sends): {purpose}.",
        },
    ]


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]  # drf-spectacular's __init_subclass__ is unannotated
    """A respcache key in ``x-api-key`` or as ``Authorization: Bearer``: either one (OR)."""

    target_class = "respcache.api.authentication.ApiKeyAuthentication"
    name = ["ApiKeyHeader", "ApiKeyBearer"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        return [{name: []} for name in self.name]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return _key_schemes("allowed this workload, see manage.py respcache_apikey --workload")


class OptionalApiKeyAuthenticationScheme(ApiKeyAuthenticationScheme):  # type: ignore[no-untyped-call]  # drf-spectacular's __init_subclass__ is unannotated
    """The management API's keys: the same kind of key, granted management of workloads.
    (Its own scheme names: drf-spectacular keys security schemes by authentication class.)"""

    target_class = "respcache.api.authentication.OptionalApiKeyAuthentication"
    name = ["ManagementKeyHeader", "ManagementKeyBearer"]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return _key_schemes("granted management of the workload, see manage.py respcache_apikey --manage")


_ERRORS = {
    400: "invalid_request_error: not JSON, not an object, model/messages/max_tokens missing or of the "
    "wrong type, NaN/Infinity, nesting too deep, more JSON values than the limit (a million by default).",
    401: "authentication_error: no key, or an unknown, revoked or expired one.",
    403: "permission_error: the key may not call this workload.",
    404: "not_found_error: unknown workload.",
    413: "request_too_large: the body is over the limit (32 MiB by default).",
    429: "The upstream's rate limit: its status, body and retry-after header, passed through.",
    500: "The upstream's error, passed through.",
    502: "api_error: the upstream could not be reached.",
    529: "overloaded_error: the upstream is overloaded (passed through).",
}


def _call_parameters() -> list[Any]:
    """Path and header parameters of the call endpoints, and the X-Respcache response headers."""
    from drf_spectacular.types import OpenApiTypes
    from drf_spectacular.utils import OpenApiParameter

    header: Literal["header"] = OpenApiParameter.HEADER  # the location type OpenApiParameter takes
    return [
        OpenApiParameter(
            "workload",
            OpenApiTypes.STR,
            OpenApiParameter.PATH,
            pattern=r"^[-a-zA-Z0-9_]+$",
            description="The workload (its policy: TTL, key version, strictness).",
        ),
        OpenApiParameter(
            "Cache-Control",
            OpenApiTypes.STR,
            header,
            description="`no-cache`: skip the lookup, call upstream, store the fresh answer "
            "(refresh). `no-store`: do not store this call's answer.",
        ),
        OpenApiParameter(
            "anthropic-beta",
            OpenApiTypes.STR,
            header,
            description="Forwarded upstream; its sorted values are part of the cache key.",
        ),
        OpenApiParameter("anthropic-version", OpenApiTypes.STR, header, description="Forwarded upstream."),
        OpenApiParameter(
            "Respcache-Explain",
            OpenApiTypes.STR,
            header,
            enum=["1"],
            description="`1`: on a miss, say why in X-Respcache-Miss.",
        ),
        OpenApiParameter(
            "X-Respcache-Miss",
            OpenApiTypes.STR,
            header,
            response=[200],
            pattern=r"^(new|differs=[^,]+(,[^,]+)*)$",
            description="On a miss, for callers sending Respcache-Explain: 1: `new` (no stored request of "
            "this workload and key version shares its shape) or `differs=<field>[,<field>...]` (the "
            "top-level fields, or `messages[i]`, in which the closest stored request differs).",
        ),
        OpenApiParameter(
            "X-Respcache",
            OpenApiTypes.STR,
            header,
            response=[200],
            enum=["hit", "miss", "wait", "bypass", "refresh"],
            description="hit: stored answer; miss: called upstream; wait: another caller's "
            "in-flight answer; bypass: not cacheable; refresh: Cache-Control: no-cache.",
        ),
        OpenApiParameter(
            "X-Respcache-Key",
            OpenApiTypes.STR,
            header,
            response=[200],
            pattern=r"^[0-9a-f]{64}$",
            description="The request's cache key (SHA-256 of its canonical form).",
        ),
        OpenApiParameter(
            "Age",
            OpenApiTypes.INT,
            header,
            response=[200],
            description="Seconds since the answer was stored (hit and wait only).",
        ),
    ]


def _error_responses() -> dict[Any, Any]:
    from drf_spectacular.utils import OpenApiResponse

    from respcache.api.serializers import ErrorSerializer

    return {
        (status, "application/json"): OpenApiResponse(ErrorSerializer, description=text)
        for status, text in _ERRORS.items()
    }


def messages_create_schema() -> Callable[[F], F]:
    """``extend_schema`` for ``POST /w/<workload>/v1/messages`` (MessagesView)."""
    from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema

    from respcache.api.serializers import MessageParamSerializer, MessageSerializer, ServerSentEventSerializer

    return extend_schema(
        operation_id="messages_create",
        tags=["messages"],
        summary="Create a Message through the cache",
        description=(
            "Anthropic Messages API compatible: point the official SDK at `/w/<workload>` "
            "(`base_url`). The body is passed upstream as it is; respcache answers from Redis when "
            "it has seen the same request (see the X-Respcache header) and otherwise calls the "
            "upstream exactly once per key. Errors are Anthropic error JSON."
        ),
        request={"application/json": MessageParamSerializer},
        examples=[
            OpenApiExample(
                "Classify (cached)",
                request_only=True,
                value={
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 20,
                    "temperature": 0,
                    "system": "Answer with one intent label.",
                    "messages": [{"role": "user", "content": "I forgot my password"}],
                },
            ),
            OpenApiExample(
                "Creative (never cached: bypass)",
                request_only=True,
                value={
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 200,
                    "temperature": 0.8,
                    "system": [{"type": "text", "text": "Write a haiku.", "cache_control": {"type": "ephemeral"}}],
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "about caches"}]}],
                    "metadata": {"user_id": "u-42"},
                },
            ),
        ],
        parameters=_call_parameters(),
        responses={
            (200, "application/json"): OpenApiResponse(
                MessageSerializer,
                description='The Message, as the upstream returned it; with `"stream": true`, its events.',
            ),
            (200, "text/event-stream"): OpenApiResponse(
                ServerSentEventSerializer,
                description='The Message, as the upstream returned it; with `"stream": true`, its events.',
            ),
            **_error_responses(),
        },
    )


def count_tokens_schema() -> Callable[[F], F]:
    """``extend_schema`` for ``POST /w/<workload>/v1/messages/count_tokens`` (CountTokensView)."""
    from drf_spectacular.utils import OpenApiResponse, extend_schema

    from respcache.api.serializers import CountTokensParamSerializer, TokenCountSerializer

    return extend_schema(
        operation_id="messages_count_tokens",
        tags=["messages"],
        summary="Count a request's tokens through the cache",
        description=(
            "Anthropic's count_tokens, cached in its own key space whenever the workload is "
            "enabled (a count is deterministic). Errors are Anthropic error JSON."
        ),
        request={"application/json": CountTokensParamSerializer},
        parameters=_call_parameters(),
        responses={
            (200, "application/json"): OpenApiResponse(TokenCountSerializer, description="The count."),
            **_error_responses(),
        },
    )


# --- the call endpoints ----------------------------------------------------------------------


class _CallDescription(APIView):
    """What drf-spectacular reads to describe a call endpoint (its security from the
    authentication class); never routed, never serves."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes: list[Any] = []


class MessagesDescription(_CallDescription):
    @messages_create_schema()
    def post(self, request: Request, workload: str) -> None:
        raise NotImplementedError  # served by MessagesView


class CountTokensDescription(_CallDescription):
    @count_tokens_schema()
    def post(self, request: Request, workload: str) -> None:
        raise NotImplementedError  # served by CountTokensView


#: Each call view with its description, subclasses first (CountTokensView is a MessagesView).
DESCRIPTIONS: list[tuple[type[MessagesView], type[APIView]]] = [
    (CountTokensView, CountTokensDescription),
    (MessagesView, MessagesDescription),
]

#: What a preprocessing hook receives and returns: (path, path_regex, method, callback).
Endpoint = tuple[str, str, str, Callable[..., Any]]


def call_endpoints(endpoints: list[Endpoint]) -> list[Endpoint]:
    """drf-spectacular preprocessing hook: ``endpoints`` (the DRF views) plus a POST for each
    route of the root URLconf served by a call view, described by its description view."""
    enumerator = EndpointEnumerator()  # the root URLconf, read as drf-spectacular reads it
    added: list[Endpoint] = []
    for route, view_class in _routes(enumerator.patterns):
        for served_by, description in DESCRIPTIONS:
            if isinstance(view_class, type) and issubclass(view_class, served_by):
                path: str = enumerator.get_path_from_regex(route)  # type: ignore[no-untyped-call]  # unannotated there
                added.append((path, route, "POST", description.as_view()))
                break
    return [*endpoints, *added]


def _routes(patterns: Sequence[URLPattern | URLResolver] | None, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every route of a URLconf with the class of its view (None for a function view)."""
    for pattern in patterns or ():
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route, getattr(pattern.callback, "view_class", None)
