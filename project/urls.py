"""The service's URLs: the call endpoint, the admin, health."""

from django.contrib import admin
from django.urls import include, path

from respcache.health import healthz

urlpatterns = [
    path("", include("respcache.api.urls")),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
]
