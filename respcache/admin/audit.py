"""The audit trail in the admin, read-only: entries are written by the governance services in
``respcache.services``, never by hand."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext_lazy

from respcache.models import AuditEntry


class AuditEntryAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # Django's class takes no [] at run time
    """Read-only: entries are written by the services, never by hand."""

    list_display = ("created_at", "actor", "action", "workload_slug", "changes", "entries_purged")
    list_filter = ("action", "workload_slug")
    search_fields = ("actor", "workload_slug")
    date_hierarchy = "created_at"
    readonly_fields = (
        "created_at",
        "actor",
        "user",
        "action",
        "workload",
        "workload_slug",
        "before",
        "after",
        "entries_purged",
    )

    @admin.display(description=gettext_lazy("before → after"))
    def changes(self, obj: AuditEntry) -> str:
        names = list(dict.fromkeys([*obj.before, *obj.after]))
        if not names:
            return "–"
        return "; ".join(f"{n}: {obj.before.get(n, '–')} → {obj.after.get(n, '–')}" for n in names)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False
