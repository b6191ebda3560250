"""The workload admin: the changelist with each workload's live numbers, the policy form, and the
actions (bump the key version, purge with a confirmation page, enable, disable).

Its extra pages (stats, entries, bump and purge buttons) come from
:class:`respcache.admin.pages.WorkloadPagesMixin`. Every change goes through a governance service
in ``respcache.services``, which records it in the audit trail and the log.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from respcache import selectors, services, stats
from respcache.admin import presenters
from respcache.admin.pages import WorkloadPagesMixin, actor
from respcache.conf import app_settings
from respcache.drift import Drift
from respcache.exceptions import CacheUnavailable
from respcache.models import Workload
from respcache.stats import Totals

#: The policy fields the change form edits: all but the key version, which only the Bump action
#: changes (an atomic increment, published to Redis).
FORM_POLICY_FIELDS = tuple(name for name in services.POLICY_FIELDS if name != "key_version")


class WorkloadChangeList(ChangeList):
    """Reads the live numbers of the page's workloads in one Redis round trip, once per page,
    and the drift alerts among them (``rc_drift``: the banner's lines)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        rows = list(self.result_list)
        try:
            numbers = selectors.workloads_numbers([w.slug for w in rows], ("1h", "24h", stats.BASELINE))
        except CacheUnavailable as exc:
            numbers = {}
            messages.warning(request, _("Redis is unavailable, live numbers are not shown: %s") % exc)
        self.rc_drift: list[str] = []
        for workload in rows:
            # Kept on the row for the columns below: Django gives them the row, not the list.
            found = numbers.get(workload.slug)
            workload._rc_numbers = found
            if found is None:
                continue
            drift = Drift(found["1h"], found[stats.BASELINE], workload.drift_threshold_points)
            if drift.alert and drift.drop_points is not None:
                self.rc_drift.append(
                    presenters.drift_line(
                        workload.slug, drift.recent, drift.baseline, drift.drop_points, drift.threshold_points
                    )
                )


def _numbers(workload: Workload, window: str) -> Totals | None:
    found = getattr(workload, "_rc_numbers", None)
    return found.get(window) if found else None


class WorkloadAdmin(WorkloadPagesMixin, admin.ModelAdmin):  # type: ignore[type-arg]  # Django's class takes no [] at run time
    # The numbers people scan first on the left; the whole row fits a 1280-px-wide window.
    list_display = (
        "slug",
        "hit_rate_1h",
        "tokens_saved_24h",
        "requests_24h",
        "hit_rate_24h",
        "stampede_rate_24h",
        "dead_write_rate_24h",
        "shadow_24h",
        "enabled",
        "ttl",
        "key_version",
        "pages",
    )
    list_filter = ("enabled", "shadow", "strict")
    search_fields = ("slug", "description")
    actions = ["bump_key_version", "purge_entries", "enable", "disable"]

    # --- the change form ---

    def get_fieldsets(self, request: HttpRequest, obj: Workload | None = None) -> Any:
        seconds = app_settings.LOCAL_CACHE_SECONDS
        propagation = _(
            "A saved change takes effect on every worker within %(seconds)s seconds, with no "
            "restart: each worker keeps its copy of a policy for that long "
            "(RESPCACHE['LOCAL_CACHE_SECONDS']). A key-version bump (the Bump action) reaches "
            "every worker on its very next call: the version lives in Redis."
        ) % {"seconds": f"{seconds:g}"}
        return [
            (None, {"fields": ["slug", "enabled", "shadow", "description"]}),
            (
                _("Policy"),
                {
                    "fields": [
                        "ttl_seconds",
                        "strict",
                        "lock_ttl",
                        "wait_max",
                        "drift_threshold_points",
                        "key_version",
                    ],
                    "description": propagation,
                },
            ),
            (
                _("Budget"),
                {
                    "fields": ["max_upstream_per_minute", "max_tokens_per_day"],
                    "description": _(
                        "Limits on what this workload spends upstream (0: none). Over budget, a "
                        "call that would go upstream gets 429 rate_limit_error with retry-after; "
                        "hits and waits are still served."
                    ),
                },
            ),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Workload | None = None) -> Any:
        # The key version changes only through the Bump action (an atomic increment, published
        # to Redis); a renamed slug would orphan its entries and break its callers' URLs.
        return ("key_version", "slug") if obj is not None else ("key_version",)

    def save_model(self, request: HttpRequest, obj: Workload, form: ModelForm[Workload], change: bool) -> None:
        """Saved and audited by ``services.workload_upsert``, as every other surface saves a
        policy. It writes the form's policy fields on the stored row, never the key version: a
        bump made while the form was open stays."""
        saved, _created = services.workload_upsert(
            slug=obj.slug,
            actor=actor(request),
            user=request.user,
            **{name: getattr(obj, name) for name in FORM_POLICY_FIELDS},
        )
        # The admin goes on with the form's instance (its id in the redirect and the history
        # entry, its values in the message): make it the row just saved.
        for f in obj._meta.concrete_fields:
            setattr(obj, f.attname, getattr(saved, f.attname))
        obj._state.adding, obj._state.db = False, saved._state.db

    # --- the changelist ---

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return WorkloadChangeList

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra = {
            "local_cache_seconds": f"{app_settings.LOCAL_CACHE_SECONDS:g}",
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra)

    @admin.display(description=gettext_lazy("TTL"), ordering="ttl_seconds")
    def ttl(self, obj: Workload) -> str:
        return presenters.duration(obj.ttl_seconds)

    @admin.display(description=gettext_lazy("hit 1\u00a0h"))
    def hit_rate_1h(self, obj: Workload) -> str:
        totals = _numbers(obj, "1h")
        return "?" if totals is None else presenters.percent(totals.hit_rate)

    @admin.display(description=gettext_lazy("hit 24\u00a0h"))
    def hit_rate_24h(self, obj: Workload) -> str:
        totals = _numbers(obj, "24h")
        return "?" if totals is None else presenters.percent(totals.hit_rate)

    @admin.display(description=gettext_lazy("stampede 24\u00a0h"))
    def stampede_rate_24h(self, obj: Workload) -> str:
        totals = _numbers(obj, "24h")
        return "?" if totals is None else presenters.percent(totals.stampede_rate)

    @admin.display(description=gettext_lazy("dead writes 24\u00a0h"))
    def dead_write_rate_24h(self, obj: Workload) -> str:
        totals = _numbers(obj, "24h")
        return "?" if totals is None else presenters.percent(totals.dead_write_rate)

    @admin.display(description=gettext_lazy("requests 24\u00a0h"))
    def requests_24h(self, obj: Workload) -> str:
        totals = _numbers(obj, "24h")
        return "?" if totals is None else f"{totals.requests:,}"

    @admin.display(description=gettext_lazy("tokens saved 24\u00a0h (in\u00a0/\u00a0out)"))
    def tokens_saved_24h(self, obj: Workload) -> str:
        totals = _numbers(obj, "24h")
        return "?" if totals is None else presenters.tokens_saved(totals)

    @admin.display(description=gettext_lazy("shadow agreement 24\u00a0h"))
    def shadow_24h(self, obj: Workload) -> str:
        totals = _numbers(obj, "24h")
        return "?" if totals is None else presenters.shadow_cell(obj.shadow, totals)

    @admin.display(description="")
    def pages(self, obj: Workload) -> SafeString:
        return format_html(
            '<a href="{}">{}</a><br><a href="{}">{}</a>',
            reverse("admin:respcache_workload_stats", args=[obj.pk]),
            _("stats"),
            reverse("admin:respcache_workload_entries", args=[obj.pk]),
            _("entries"),
        )

    # --- permissions of the dangerous buttons (actions here, buttons on the pages) ---

    def has_bump_permission(self, request: HttpRequest, obj: Workload | None = None) -> bool:
        return bool(request.user.has_perm("respcache.bump_workload"))

    def has_purge_permission(self, request: HttpRequest, obj: Workload | None = None) -> bool:
        return bool(request.user.has_perm("respcache.purge_workload"))

    # --- actions ---

    @admin.action(
        permissions=["bump"],
        description=gettext_lazy("Bump key version (orphan every stored answer)"),
    )
    def bump_key_version(self, request: HttpRequest, queryset: QuerySet[Workload]) -> None:
        bumped = [f"{w.slug} → {services.workload_bump(w, actor=actor(request), user=request.user)}" for w in queryset]
        self.message_user(
            request,
            ngettext(
                "Bumped the key version of %(count)d workload: %(list)s.",
                "Bumped the key versions of %(count)d workloads: %(list)s.",
                len(bumped),
            )
            % {"count": len(bumped), "list": ", ".join(bumped)},
            messages.SUCCESS,
        )

    @admin.action(permissions=["purge"], description=gettext_lazy("Purge stored entries…"))
    def purge_entries(self, request: HttpRequest, queryset: QuerySet[Workload]) -> TemplateResponse | None:
        """Like Django's delete action: the first POST shows how many entries will go, the
        second (``post=yes``) deletes them."""
        workloads = list(queryset)
        try:
            if request.POST.get("post"):
                total = sum(services.workload_purge(w, actor=actor(request), user=request.user) for w in workloads)
                self.message_user(
                    request,
                    ngettext(
                        "Purged %(count)d entry from %(workloads)s.",
                        "Purged %(count)d entries from %(workloads)s.",
                        total,
                    )
                    % {"count": total, "workloads": ", ".join(w.slug for w in workloads)},
                    messages.SUCCESS,
                )
                return None
            counts = [(w, selectors.workload_entries_count(w)) for w in workloads]
        except CacheUnavailable as exc:
            self.message_user(request, _("Redis is unavailable, nothing was purged: %s") % exc, messages.ERROR)
            return None
        return self.purge_confirmation(request, counts, action=True)

    @admin.action(permissions=["change"], description=gettext_lazy("Enable caching"))
    def enable(self, request: HttpRequest, queryset: QuerySet[Workload]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(permissions=["change"], description=gettext_lazy("Disable caching (every call bypasses)"))
    def disable(self, request: HttpRequest, queryset: QuerySet[Workload]) -> None:
        self._set_enabled(request, queryset, False)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[Workload], enabled: bool) -> None:
        changed = sum(
            services.workload_set_enabled(w, enabled, actor=actor(request), user=request.user) for w in queryset
        )
        message = (
            ngettext("Enabled %(count)d workload.", "Enabled %(count)d workloads.", changed)
            if enabled
            else ngettext("Disabled %(count)d workload.", "Disabled %(count)d workloads.", changed)
        )
        self.message_user(request, message % {"count": changed}, messages.SUCCESS)
