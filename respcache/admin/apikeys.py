"""Caller API keys in the admin: created here (the raw key is shown once), listed with their
workloads, revoked by an action through ``respcache.services``.

A key that manages a workload may bump and purge it through the REST API: granting that (on a
new key or an existing one) needs the granting user to hold both ``respcache.bump_workload`` and
``respcache.purge_workload``, or the form is refused naming the workloads."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from rest_framework_api_key.admin import APIKeyModelAdmin

from respcache import services
from respcache.conf import app_settings
from respcache.models import ApiKey

#: What a user needs to grant a key the management of a workload: what that key may then do.
MANAGEMENT_PERMISSIONS = ("respcache.bump_workload", "respcache.purge_workload")


def can_grant_management(user: Any) -> bool:
    """Whether ``user`` may give a key ``managed_workloads`` (model permissions: they hold for
    every workload, so a superuser, or a user with both bump and purge, may grant any)."""
    return bool(user.has_perms(MANAGEMENT_PERMISSIONS))


def management_grant_form(base: type[forms.ModelForm[ApiKey]], user: Any) -> type[forms.ModelForm[ApiKey]]:
    """``base`` with a check of the managed workloads it would add against ``user``'s permissions."""

    class ManagementGrantForm(base):  # type: ignore[valid-type,misc]  # a class built at run time
        def clean_managed_workloads(self) -> Any:
            chosen = self.cleaned_data.get("managed_workloads")
            if chosen is None or can_grant_management(user):
                return chosen
            already = set(self.instance.managed_workloads.values_list("pk", flat=True)) if self.instance.pk else set()
            added = sorted(w.slug for w in chosen if w.pk not in already)
            if added:
                raise forms.ValidationError(
                    _(
                        "You cannot grant management of %(workloads)s: a managing key may bump and "
                        "purge, so granting it needs both the “Can bump a workload's key version” "
                        "and “Can purge a workload's entries” permissions."
                    )
                    % {"workloads": ", ".join(added)},
                    code="management_not_permitted",
                )
            return chosen

    return ManagementGrantForm


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

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        return management_grant_form(super().get_form(request, obj, change, **kwargs), request.user)

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
