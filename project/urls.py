"""The service's URLs: the call endpoint and management API, the admin, health, metrics, OpenAPI."""

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.defaults import page_not_found
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from respcache.api.views import error_response
from respcache.health import healthz
from respcache.metrics import metrics

urlpatterns = [
    path("", include("respcache.api.urls")),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    """API paths answer a path that matches no route in the API's error format, not HTML."""
    if request.path.startswith(("/w/", "/api/")):
        return error_response(404, "not_found_error", "Not found.")
    return page_not_found(request, exception)
