"""The REST management API: list workloads with their numbers, read one's stats and miss reasons,
bump, purge.

For staff users with an admin session (bump and purge need the ``respcache.bump_workload`` /
``respcache.purge_workload`` permissions) and for API keys granted management of a workload
(``ApiKey.managed_workloads``); never HTTP Basic auth, so a stranger's request costs no password
hash. Requests are throttled (``api/throttling.py``): strangers per client IP, users and keys each
on their own. Bumps and purges go through the same audited services as the admin's and the
commands', with the actor ``user:<username>`` or ``apikey:<name>``. Errors use the Anthropic error
JSON of the rest of the API.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from respcache import selectors, services, stats
from respcache.api.authentication import OptionalApiKeyAuthentication
from respcache.api.permissions import CanManageWorkloads, grant_of
from respcache.api.serializers import (
    ErrorSerializer,
    WorkloadMissesSerializer,
    WorkloadSerializer,
    WorkloadStatsSerializer,
)
from respcache.api.throttling import AnonymousRateThrottle, CallerRateThrottle
from respcache.api.views import anthropic_exception_handler, error_response
from respcache.exceptions import CacheUnavailable, RespcacheError, WorkloadNotFound
from respcache.models import Workload

logger = logging.getLogger(__name__)


def _flatten(detail: Any, field: str = "") -> list[str]:
    if isinstance(detail, dict):
        return [
            m for name, value in detail.items() for m in _flatten(value, "" if name == "non_field_errors" else name)
        ]
    if isinstance(detail, list):
        return [m for value in detail for m in _flatten(value, field)]
    return [f"{field}: {detail}" if field else str(detail)]


def management_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse:
    """The messages endpoint's handler, plus readable validation errors and a 503 for Redis."""
    if isinstance(exc, drf_exceptions.ValidationError):
        return error_response(400, "invalid_request_error", " ".join(_flatten(exc.detail)))
    if isinstance(exc, CacheUnavailable):
        # The Redis error names hosts and ports: it goes to the log, not to the client.
        logger.warning("respcache: management API could not reach Redis (%s)", exc)
        return error_response(503, "api_error", "Redis is unavailable; try again later.")
    response = anthropic_exception_handler(exc, context)
    auth_header = getattr(exc, "auth_header", None)
    if auth_header and response.status_code == 401:
        response["WWW-Authenticate"] = auth_header
    return response


def _errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """An operation's error responses: ``statuses``, and the 429 that every one may answer."""
    descriptions = {
        400: "Bad input (e.g. an unknown window).",
        401: "No or invalid credentials.",
        403: "Not staff, missing the permission, or a key that does not manage this workload.",
        404: "Unknown workload.",
        429: "Too many requests from this client IP, user or key (see the Retry-After header).",
        503: "Redis is unavailable.",
    }
    return {s: OpenApiResponse(ErrorSerializer, description=descriptions[s]) for s in (*statuses, 429)}


SLUG = OpenApiParameter(
    "slug", OpenApiTypes.STR, OpenApiParameter.PATH, pattern=r"^[-a-zA-Z0-9_]+$", description="The workload."
)


class WindowInputSerializer(serializers.Serializer[dict[str, Any]]):
    window = serializers.ChoiceField(
        choices=list(stats.WINDOWS), default="1h", help_text="Rolling window of the numbers."
    )


class ManagementView(APIView):
    """Shared auth, permission, rendering and error handling of the management endpoints."""

    authentication_classes = [OptionalApiKeyAuthentication, SessionAuthentication]
    permission_classes = [CanManageWorkloads]
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser]
    throttle_classes = [AnonymousRateThrottle, CallerRateThrottle]
    #: The Django permission a staff user needs for this view (None: staff is enough).
    required_permission: str | None = None

    def get_exception_handler(self) -> Any:
        return management_exception_handler

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        """DRF's, with the throttles between authentication and permissions, and applied to a
        failed authentication too. DRF's own order (authenticate, permissions, throttles) answers
        a stranger's 401 before counting it: strangers would never be throttled."""
        self.format_kwarg = self.get_format_suffix(**kwargs)
        request.accepted_renderer, request.accepted_media_type = self.perform_content_negotiation(request)
        request.version, request.versioning_scheme = self.determine_version(request, *args, **kwargs)
        try:
            self.perform_authentication(request)
        except (drf_exceptions.APIException, RespcacheError):
            # Whatever it presented, this caller is a stranger: it counts at the anonymous rate
            # (a 429 then wins over the 401).
            request.user, request.auth = AnonymousUser(), None
            self.check_throttles(request)
            raise
        self.check_throttles(request)
        self.check_permissions(request)

    def get_workload(self, slug: str) -> Workload:
        self.check_object_permissions(self.request, slug)
        workload = selectors.workload_get(slug)
        if workload is None:
            raise WorkloadNotFound(f"Unknown workload: {slug!r}.")
        return workload

    def actor(self) -> tuple[str, Any]:
        """The audit trail's actor and user for this request."""
        grant = grant_of(self.request)
        if grant is not None:
            return f"apikey:{grant.name}", None
        user = self.request.user
        return f"user:{user.get_username()}", user

    @staticmethod
    def window(request: Request) -> str:
        serializer = WindowInputSerializer(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        return str(serializer.validated_data["window"])


class WorkloadListView(ManagementView):
    """``GET /api/workloads/``: every workload (a key: those it manages) with its numbers."""

    @extend_schema(
        operation_id="workloads_list",
        tags=["management"],
        parameters=[WindowInputSerializer],
        responses={200: WorkloadSerializer(many=True), **_errors(400, 401, 403, 503)},
    )
    def get(self, request: Request) -> Response:
        window = self.window(request)
        workloads = selectors.workloads_list()
        grant = grant_of(request)
        if grant is not None:
            workloads = [w for w in workloads if w.slug in grant.managed_workloads]
        numbers = selectors.workloads_numbers([w.slug for w in workloads], (window,))  # one round trip
        for workload in workloads:
            # An attribute the serializer reads (WorkloadSerializer.stats), not a model field.
            workload.stats = numbers[workload.slug][window].as_dict()  # type: ignore[attr-defined]
        return Response(WorkloadSerializer(workloads, many=True).data)


class WorkloadStatsView(ManagementView):
    """``GET /api/workloads/<slug>/stats/?window=1h``: the workload's numbers over the window."""

    @extend_schema(
        operation_id="workloads_stats",
        tags=["management"],
        parameters=[SLUG, WindowInputSerializer],
        responses={200: WorkloadStatsSerializer, **_errors(400, 401, 403, 404, 503)},
    )
    def get(self, request: Request, slug: str) -> Response:
        window = self.window(request)
        workload = self.get_workload(slug)
        totals = selectors.workload_totals(workload.slug, window)
        data = {
            "workload": workload.slug,
            "key_version": workload.key_version,
            "enabled": workload.enabled,
            **totals.as_dict(),
        }
        return Response(WorkloadStatsSerializer(data).data)


class WorkloadMissesView(ManagementView):
    """``GET /api/workloads/<slug>/misses/?window=1h``: why the workload's calls missed."""

    @extend_schema(
        operation_id="workloads_misses",
        tags=["management"],
        parameters=[SLUG, WindowInputSerializer],
        responses={200: WorkloadMissesSerializer, **_errors(400, 401, 403, 404, 503)},
    )
    def get(self, request: Request, slug: str) -> Response:
        window = self.window(request)
        workload = self.get_workload(slug)
        totals = selectors.workload_totals(workload.slug, window)
        reasons = totals.miss_reasons()
        data = {
            "workload": workload.slug,
            "key_version": workload.key_version,
            "window": window,
            "misses": totals["miss"] + totals["fallthrough"],
            "explained": sum(reasons.values()),
            "reasons": reasons,
        }
        return Response(WorkloadMissesSerializer(data).data)


class WorkloadBumpView(ManagementView):
    """``POST /api/workloads/<slug>/bump/``: bump the key version (every older entry unreachable)."""

    required_permission = "respcache.bump_workload"

    @extend_schema(
        operation_id="workloads_bump",
        tags=["management"],
        parameters=[SLUG],
        request=None,
        responses={
            200: inline_serializer(
                "BumpOutput", {"workload": serializers.CharField(), "key_version": serializers.IntegerField()}
            ),
            **_errors(401, 403, 404),
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        workload = self.get_workload(slug)
        actor, user = self.actor()
        version = services.workload_bump(workload, actor=actor, user=user)
        return Response({"workload": workload.slug, "key_version": version})


class WorkloadPurgeView(ManagementView):
    """``POST /api/workloads/<slug>/purge/``: delete the workload's entries now; says how many."""

    required_permission = "respcache.purge_workload"

    @extend_schema(
        operation_id="workloads_purge",
        tags=["management"],
        parameters=[SLUG],
        request=None,
        responses={
            200: inline_serializer(
                "PurgeOutput", {"workload": serializers.CharField(), "purged": serializers.IntegerField()}
            ),
            **_errors(401, 403, 404, 503),
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        workload = self.get_workload(slug)
        actor, user = self.actor()
        purged = services.workload_purge(workload, actor=actor, user=user)
        return Response({"workload": workload.slug, "purged": purged})
