"""Caller API keys in the admin: created here (the raw key is shown once), listed with their
workloads, revoked by an action through ``respcache.services``."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join
from django.utils.translation import gettext_lazy, ngettext
from rest_framework_api_key.admin import APIKeyModelAdmin

from respcache import services
from respcache.conf import app_settings
from respcache.models import ApiKey


class ApiKeyAdmin(APIKeyModelAdmin):
    """Create shows the key once (the library's save_model); only its hash is stored."""

    list_display = (  # type: ignore[assignment]
        "name",
        "prefix",
        "workload_list",
        "created",
        "last_used_at",
        "expiry_date",
        "revoked",
    )
    list_filter = ("revoked", "created")  # type: ignore[assignment]
    search_fields = ("name", "prefix")
    filter_horizontal = ("workloads", "managed_workloads")
    actions = ["revoke"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        return super().get_queryset(request).prefetch_related("workloads")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return (*super().get_readonly_fields(request, obj), "last_used_at")

    @admin.display(description=gettext_lazy("workloads"))
    def workload_list(self, obj: ApiKey) -> str:
        return format_html_join(", ", "{}", ((w.slug,) for w in obj.workloads.all())) or "–"

    def save_model(self, request: HttpRequest, obj: Any, form: Any = None, change: bool = False) -> None:
        super().save_model(request, obj, form, change)
        services.governance.policies_changed(workload="")  # every worker, at once

    @admin.action(permissions=["change"], description=gettext_lazy("Revoke selected API keys"))
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = services.api_key_revoke(queryset)
        self.message_user(
            request,
            ngettext(
                "Revoked %(count)d API key. Callers using it are refused within %(seconds)s s.",
                "Revoked %(count)d API keys. Callers using them are refused within %(seconds)s s.",
                revoked,
            )
            % {"count": revoked, "seconds": f"{app_settings.LOCAL_CACHE_SECONDS:g}"},
            messages.SUCCESS,
        )
