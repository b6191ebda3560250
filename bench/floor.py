"""The framework floor: a minimal Django + DRF view that does one Redis GET and returns the bytes.

Served by the same gunicorn settings as the service (with bench.floor_settings),
it is what any Django view answering from Redis costs; the hit path is measured against it.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django_redis import get_redis_connection
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.views import APIView


class BytesRenderer(BaseRenderer):
    media_type = "*/*"
    format = "json"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return data if isinstance(data, bytes) else b""


class FloorView(APIView):
    """Read the request (as every view must), GET one key, answer its bytes as JSON."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    throttle_classes: list[Any] = []
    renderer_classes = [BytesRenderer]

    def post(self, request: Request, name: str) -> HttpResponse:
        request.body  # noqa: B018 - drain the body, as the hit path reads it
        value = get_redis_connection("respcache").get(f"bench:floor:{name}")
        if value is None:
            return HttpResponse(status=404)
        return HttpResponse(value, content_type="application/json")


def ready(request: HttpRequest) -> HttpResponse:
    get_redis_connection("respcache").ping()
    return HttpResponse(b"ok", content_type="text/plain")


urlpatterns = [
    path("floor/<str:name>/v1/messages", FloorView.as_view()),
    path("healthz", ready),
]
