"""The admin console: workloads with live numbers and confirmed actions, stats with charts, an
entry browser, the read-only audit trail and API keys.

Pages added to the workload admin (``get_urls``): ``<id>/stats/``, ``<id>/entries/``,
``<id>/entries/<version>/<fingerprint>/`` (and ``…/delete/``), ``<id>/bump/``, ``<id>/purge/``.
Every change goes through a service in ``respcache.service``, which records it in the audit trail
and the log; reads go through ``respcache.selectors``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from respcache import charts, selectors
from respcache import services as service
from respcache.conf import app_settings
from respcache.exceptions import CacheUnavailable
from respcache.models import ApiKey, AuditEntry, Workload
from respcache.stats import Totals

FINGERPRINT = re.compile(r"[0-9a-f]{64}")
CURSOR = re.compile(r"[0-9]{1,20}")

#: Chart windows and their number of slices: 1-minute, 15-minute and 2-hour bars.
CHART_POINTS = {"1h": 61, "24h": 97, "7d": 85}

OUTCOME_SERIES = [
    charts.Series("hit", gettext_lazy("hit"), "#2e7d32"),
    charts.Series("wait", gettext_lazy("wait"), "#26a69a"),
    charts.Series("miss", gettext_lazy("miss"), "#ef6c00"),
    charts.Series("fallthrough", gettext_lazy("fallthrough"), "#8d6e63"),
    charts.Series("refresh", gettext_lazy("refresh"), "#1e88e5"),
    charts.Series("bypass", gettext_lazy("bypass"), "#90a4ae"),
]
ERROR_SERIES = [
    charts.Series("upstream_error", gettext_lazy("upstream errors"), "#c62828"),
    charts.Series("cache_error", gettext_lazy("cache errors (Redis)"), "#6a1b9a"),
]
TOKEN_SERIES = [
    charts.Series("saved_in", gettext_lazy("input tokens saved"), "#3949ab"),
    charts.Series("saved_out", gettext_lazy("output tokens saved"), "#8e24aa"),
]


def _actor(request: HttpRequest) -> str:
    return request.user.get_username() or "admin"


def duration(seconds: float | None) -> str:
    """A short human duration: 45 s, 12 min, 3 h 20 min, 2 d 4 h."""
    if seconds is None:
        return "–"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 and s < 600 else "")
    if s < 86400:
        return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    return f"{s // 86400} d" + (f" {s % 86400 // 3600} h" if s % 86400 // 3600 else "")


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _local(ts: float | None) -> datetime | None:
    return None if ts is None else timezone.localtime(datetime.fromtimestamp(ts, tz=UTC))


def _safe_next(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return fallback


# --- workloads --------------------------------------------------------------------------------


class WorkloadChangeList(ChangeList):
    """Reads the live numbers of the page's workloads in one Redis round trip, once per page."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        rows = list(self.result_list)
        try:
            numbers = selectors.workloads_numbers([w.slug for w in rows], ("1h", "24h"))
        except CacheUnavailable as exc:
            numbers = {}
            messages.warning(request, _("Redis is unavailable, live numbers are not shown: %s") % exc)
        for workload in rows:
            workload._rc_numbers = numbers.get(workload.slug)  # type: ignore[attr-defined]


def _numbers(workload: Workload, window: str) -> Totals | None:
    found = getattr(workload, "_rc_numbers", None)
    return found.get(window) if found else None


@admin.register(Workload)
class WorkloadAdmin(admin.ModelAdmin):
    list_display = (
        "slug",
        "enabled",
        "ttl",
        "key_version",
        "hit_rate_1h",
        "hit_rate_24h",
        "stampede_rate_24h",
        "dead_write_rate_24h",
        "requests_24h",
        "tokens_saved_24h",
        "pages",
    )
    list_filter = ("enabled", "strict")
    search_fields = ("slug", "description")
    actions = ["bump_key_version", "purge_entries", "enable", "disable"]
    #: Entries listed per page of the entry browser (about: a page is what SCAN returned).
    entries_per_page = 100

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
            (None, {"fields": ["slug", "enabled", "description"]}),
            (
                _("Policy"),
                {
                    "fields": ["ttl_seconds", "strict", "lock_ttl", "wait_max", "key_version"],
                    "description": propagation,
                },
            ),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Workload | None = None) -> Any:
        # The key version changes only through the Bump action (an atomic increment, published
        # to Redis); a renamed slug would orphan its entries and break its callers' URLs.
        return ("key_version", "slug") if obj is not None else ("key_version",)

    def save_model(self, request: HttpRequest, obj: Workload, form: Any, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            service.audit(
                actor=_actor(request),
                user=request.user,
                action=AuditEntry.Action.CREATE,
                workload=obj,
                after={name: getattr(obj, name) for name in service.POLICY_FIELDS},
            )
        else:
            stored = Workload.objects.get(pk=obj.pk)
            before = {name: getattr(stored, name) for name in service.POLICY_FIELDS}
            # Never write key_version from a form: a bump made while the form was open stays.
            obj.key_version = stored.key_version
            fields = [f.name for f in obj._meta.concrete_fields if not f.primary_key and f.name != "key_version"]
            obj.save(update_fields=fields)
            service.record_policy_change(obj, before, actor=_actor(request), user=request.user)
        selectors.clear_local_caches()

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
        return duration(obj.ttl_seconds)

    @admin.display(description=gettext_lazy("hit 1 h"))
    def hit_rate_1h(self, obj: Workload) -> str:
        totals = _numbers(obj, "1h")
        return "?" if totals is None else percent(totals.hit_rate)

    @admin.display(description=gettext_lazy("hit 24 h"))
    def hit_rate_24h(self, obj: Workload) -> str:
        totals = _numbers(obj, "24h")
        return "?" if totals is None else percent(totals.hit_rate)

    @admin.display(description=gettext_lazy("stampede 24 h"))
    def stampede_rate_24h(self, obj: Workload) -> str:
        totals = _numbers(obj, "24h")
        return "?" if totals is None else percent(totals.stampede_rate)

    @admin.display(description=gettext_lazy("dead writes 24 h"))
    def dead_write_rate_24h(self, obj: Workload) -> str:
        totals = _numbers(obj, "24h")
        return "?" if totals is None else percent(totals.dead_write_rate)

    @admin.display(description=gettext_lazy("requests 24 h"))
    def requests_24h(self, obj: Workload) -> str:
        totals = _numbers(obj, "24h")
        return "?" if totals is None else f"{totals.requests:,}"

    @admin.display(description=gettext_lazy("tokens saved 24 h (in / out)"))
    def tokens_saved_24h(self, obj: Workload) -> str:
        totals = _numbers(obj, "24h")
        if totals is None:
            return "?"
        saved_in, saved_out = totals["saved_in"], totals["saved_out"]
        return f"{charts.format_number(saved_in)} / {charts.format_number(saved_out)}"

    @admin.display(description="")
    def pages(self, obj: Workload) -> SafeString:
        return format_html(
            '<a href="{}">{}</a> · <a href="{}">{}</a>',
            reverse("admin:respcache_workload_stats", args=[obj.pk]),
            _("stats"),
            reverse("admin:respcache_workload_entries", args=[obj.pk]),
            _("entries"),
        )

    # --- permissions of the dangerous buttons ---

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
        bumped = [f"{w.slug} → {service.workload_bump(w, actor=_actor(request), user=request.user)}" for w in queryset]
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
                total = sum(service.workload_purge(w, actor=_actor(request), user=request.user) for w in workloads)
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
        return self._purge_confirmation(request, counts, action=True)

    def _purge_confirmation(
        self, request: HttpRequest, counts: list[tuple[Workload, int]], *, action: bool
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": _("Purge stored entries"),
            "opts": self.opts,
            "counts": counts,
            "total": sum(n for _workload, n in counts),
            "action": action,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "workload": counts[0][0] if len(counts) == 1 else None,
        }
        return TemplateResponse(request, "admin/respcache/workload/purge_confirmation.html", context)

    @admin.action(permissions=["change"], description=gettext_lazy("Enable caching"))
    def enable(self, request: HttpRequest, queryset: QuerySet[Workload]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(permissions=["change"], description=gettext_lazy("Disable caching (every call bypasses)"))
    def disable(self, request: HttpRequest, queryset: QuerySet[Workload]) -> None:
        self._set_enabled(request, queryset, False)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[Workload], enabled: bool) -> None:
        changed = sum(
            service.workload_set_enabled(w, enabled, actor=_actor(request), user=request.user) for w in queryset
        )
        message = (
            ngettext("Enabled %(count)d workload.", "Enabled %(count)d workloads.", changed)
            if enabled
            else ngettext("Disabled %(count)d workload.", "Disabled %(count)d workloads.", changed)
        )
        self.message_user(request, message % {"count": changed}, messages.SUCCESS)

    # --- extra pages ---

    def get_urls(self) -> list[Any]:
        def view(func: Any) -> Any:
            return self.admin_site.admin_view(func)

        name = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("<path:object_id>/stats/", view(self.stats_view), name=f"{name}_stats"),
            path("<path:object_id>/bump/", view(self.bump_view), name=f"{name}_bump"),
            path("<path:object_id>/purge/", view(self.purge_view), name=f"{name}_purge"),
            path("<path:object_id>/entries/", view(self.entries_view), name=f"{name}_entries"),
            path(
                "<path:object_id>/entries/<int:version>/<str:fingerprint>/",
                view(self.entry_view),
                name=f"{name}_entry",
            ),
            path(
                "<path:object_id>/entries/<int:version>/<str:fingerprint>/delete/",
                view(self.entry_delete_view),
                name=f"{name}_entry_delete",
            ),
            *super().get_urls(),
        ]

    def _workload(self, request: HttpRequest, object_id: str) -> Workload:
        workload = self.get_object(request, unquote(object_id))
        if workload is None:
            raise Http404(_("No workload with id %s.") % object_id)
        if not self.has_view_or_change_permission(request, workload):
            raise PermissionDenied
        return workload

    def _context(self, request: HttpRequest, workload: Workload, title: str, **extra: Any) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": workload,
            "workload": workload,
            "title": title,
            "has_bump_permission": self.has_bump_permission(request, workload),
            "has_purge_permission": self.has_purge_permission(request, workload),
            **extra,
        }

    def stats_view(self, request: HttpRequest, object_id: str) -> TemplateResponse:
        workload = self._workload(request, object_id)
        window = request.GET.get("window", "1h")
        if window not in CHART_POINTS:
            messages.error(request, _("Unknown window %(window)s; showing 1h.") % {"window": window})
            window = "1h"
        context = self._context(
            request,
            workload,
            _("Stats: %s") % workload.slug,
            window=window,
            windows=list(CHART_POINTS),
        )
        try:
            totals = selectors.workloads_numbers([workload.slug], ("5m", "1h", "24h", "7d"))[workload.slug]
            series = selectors.workload_series(workload.slug, window, points=CHART_POINTS[window])
            server = selectors.redis_server_info()
            version = selectors.workload_current_version(workload)
        except CacheUnavailable as exc:
            context["redis_error"] = str(exc)
            return TemplateResponse(request, "admin/respcache/workload/stats.html", context)
        context.update(
            current_version=version,
            rows=_number_rows(totals),
            server=server,
            server_rows=_server_rows(server),
            advice=_advice(totals["24h"], server),
            dead_write_24h=percent(totals["24h"].dead_write_rate),
            charts=_charts(series, window),
        )
        return TemplateResponse(request, "admin/respcache/workload/stats.html", context)

    def bump_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        workload = self._workload(request, object_id)
        if not self.has_bump_permission(request, workload):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponse(status=405, headers={"Allow": "POST"})
        version = service.workload_bump(workload, actor=_actor(request), user=request.user)
        self.message_user(
            request,
            _("Bumped %(slug)s to key version %(version)d: every older entry is unreachable now.")
            % {"slug": workload.slug, "version": version},
            messages.SUCCESS,
        )
        return HttpResponseRedirect(_safe_next(request, reverse("admin:respcache_workload_stats", args=[workload.pk])))

    def purge_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        workload = self._workload(request, object_id)
        if not self.has_purge_permission(request, workload):
            raise PermissionDenied
        stats_url = reverse("admin:respcache_workload_stats", args=[workload.pk])
        try:
            if request.method == "POST":
                purged = service.workload_purge(workload, actor=_actor(request), user=request.user)
                self.message_user(
                    request,
                    ngettext(
                        "Purged %(count)d entry from %(slug)s.",
                        "Purged %(count)d entries from %(slug)s.",
                        purged,
                    )
                    % {"count": purged, "slug": workload.slug},
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(stats_url)
            count = selectors.workload_entries_count(workload)
        except CacheUnavailable as exc:
            self.message_user(request, _("Redis is unavailable, nothing was purged: %s") % exc, messages.ERROR)
            return HttpResponseRedirect(stats_url)
        return self._purge_confirmation(request, [(workload, count)], action=False)

    def entries_view(self, request: HttpRequest, object_id: str) -> TemplateResponse:
        workload = self._workload(request, object_id)
        raw_cursor = request.GET.get("cursor", "0")
        valid = CURSOR.fullmatch(raw_cursor) is not None and int(raw_cursor) < 2**64  # Redis's range
        cursor = int(raw_cursor) if valid else 0
        if not valid:
            messages.error(request, _("The cursor must be a whole number; starting from the beginning."))
        context = self._context(request, workload, _("Entries: %s") % workload.slug, cursor=cursor)
        try:
            version = selectors.workload_current_version(workload)
            page = selectors.workload_entries_page(
                workload, version=version, cursor=cursor, page_size=self.entries_per_page
            )
        except CacheUnavailable as exc:
            context["redis_error"] = str(exc)
            return TemplateResponse(request, "admin/respcache/workload/entries.html", context)
        now = timezone.now().timestamp()
        context.update(
            current_version=version,
            page=page,
            rows=[
                {
                    "info": e,
                    "url": reverse("admin:respcache_workload_entry", args=[workload.pk, version, e.fingerprint]),
                    "stored_at": _local(e.stored_at),
                    "age": duration(now - e.stored_at) if e.stored_at else "–",
                    "ttl": duration(e.ttl_ms / 1000) if e.ttl_ms is not None else "–",
                    "size": filesizeformat(e.size) if e.size is not None else "–",
                }
                for e in page.entries
            ],
        )
        return TemplateResponse(request, "admin/respcache/workload/entries.html", context)

    def entry_view(self, request: HttpRequest, object_id: str, version: int, fingerprint: str) -> TemplateResponse:
        workload = self._workload(request, object_id)
        if not FINGERPRINT.fullmatch(fingerprint):
            raise Http404(_("Not an entry key: %s") % fingerprint)
        context = self._context(
            request,
            workload,
            _("Entry %s…") % fingerprint[:12],
            version=version,
            fingerprint=fingerprint,
        )
        try:
            found = selectors.workload_entry(workload, version=version, fingerprint=fingerprint)
        except CacheUnavailable as exc:
            context["redis_error"] = str(exc)
            return TemplateResponse(request, "admin/respcache/workload/entry.html", context)
        if found is None:
            raise Http404(_("This entry is gone (expired, evicted, purged or deleted)."))
        info, entry = found
        message_json, texts = "", []
        if entry is not None:
            try:
                message = orjson.loads(entry.message)
                message_json = orjson.dumps(message, option=orjson.OPT_INDENT_2).decode()
                texts = [
                    b.get("text", "")
                    for b in message.get("content") or []
                    if isinstance(b, dict) and b.get("type") == "text"
                ]
            except (orjson.JSONDecodeError, AttributeError):
                message_json = entry.message.decode(errors="replace")
        context.update(
            info=info,
            entry=entry,
            message_json=message_json,
            texts=texts,
            stored_at=_local(info.stored_at),
            ttl=duration(info.ttl_ms / 1000) if info.ttl_ms is not None else "–",
        )
        return TemplateResponse(request, "admin/respcache/workload/entry.html", context)

    def entry_delete_view(self, request: HttpRequest, object_id: str, version: int, fingerprint: str) -> HttpResponse:
        workload = self._workload(request, object_id)
        if not self.has_purge_permission(request, workload):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponse(status=405, headers={"Allow": "POST"})
        if not FINGERPRINT.fullmatch(fingerprint):
            raise Http404(_("Not an entry key: %s") % fingerprint)
        entries_url = reverse("admin:respcache_workload_entries", args=[workload.pk])
        try:
            deleted = service.entry_delete(
                workload,
                version=version,
                fingerprint=fingerprint,
                actor=_actor(request),
                user=request.user,
            )
        except CacheUnavailable as exc:
            self.message_user(request, _("Redis is unavailable, nothing was deleted: %s") % exc, messages.ERROR)
            return HttpResponseRedirect(entries_url)
        if deleted:
            self.message_user(request, _("Deleted entry %s.") % fingerprint, messages.SUCCESS)
        else:
            self.message_user(request, _("Entry %s was already gone.") % fingerprint, messages.WARNING)
        return HttpResponseRedirect(entries_url)


def _number_rows(totals: dict[str, Totals]) -> list[tuple[str, list[str]]]:
    """The stats page's table: one row per number, one column per window."""
    order = ["5m", "1h", "24h", "7d"]
    cols = [totals[w] for w in order]

    def row(label: str, fn: Any) -> tuple[str, list[str]]:
        return label, [fn(t) for t in cols]

    def latency(t: Totals) -> str:
        ms = t.upstream_latency_ms
        return "–" if ms is None else f"{ms:,.0f} ms"

    return [
        row(_("requests"), lambda t: f"{t.requests:,}"),
        row(_("hit rate"), lambda t: percent(t.hit_rate)),
        row(_("hit + wait"), lambda t: f"{t['hit']:,} + {t['wait']:,}"),
        row(_("miss + fallthrough"), lambda t: f"{t['miss']:,} + {t['fallthrough']:,}"),
        row(_("bypass / refresh"), lambda t: f"{t['bypass']:,} / {t['refresh']:,}"),
        row(_("stampede rate (wait / miss)"), lambda t: percent(t.stampede_rate)),
        row(_("entries written"), lambda t: f"{t['written']:,}"),
        row(_("dead-write rate"), lambda t: percent(t.dead_write_rate)),
        row(
            _("entries expired in window / of them read"),
            lambda t: f"{t['exp_written']:,} / {t['exp_read']:,}",
        ),
        row(_("tokens saved (in / out)"), lambda t: f"{t['saved_in']:,} / {t['saved_out']:,}"),
        row(_("upstream calls"), lambda t: f"{t['upstream_calls']:,}"),
        row(_("upstream latency (mean)"), latency),
        row(_("upstream errors"), lambda t: f"{t['upstream_error']:,}"),
        row(_("cache errors (Redis)"), lambda t: f"{t['cache_error']:,}"),
    ]


def _server_rows(server: Any) -> list[tuple[str, str]]:
    def known(value: Any, fmt: Any = str) -> str:
        return _("not reported") if value is None or value == "" else fmt(value)

    maxmemory = server.maxmemory
    return [
        (_("used memory"), known(server.used_memory, filesizeformat)),
        (_("maxmemory"), _("no limit") if maxmemory == 0 else known(maxmemory, filesizeformat)),
        (_("maxmemory-policy"), known(server.maxmemory_policy)),
        (_("evicted keys (since start)"), known(server.evicted_keys, lambda v: f"{v:,}")),
        (_("expired keys (since start)"), known(server.expired_keys, lambda v: f"{v:,}")),
    ]


def _advice(day: Totals, server: Any) -> str:
    """One sentence that reads the dead-write rate against the server's memory."""
    rate = day.dead_write_rate
    if rate is None:
        return _("No entry reached its expiry in the last 24 h yet: no dead-write rate to read.")
    if rate < 0.5:
        return _("Most entries are read before they expire: the TTL fits this workload.")
    evicting = bool(server.evicted_keys) and bool(server.maxmemory)
    if evicting:
        return _(
            "Most entries go unread and this Redis evicts keys at its memory limit: the TTL is "
            "too long for this Redis (entries are pushed out before anyone asks again). Shorten "
            "the TTL or give Redis more memory."
        )
    return _(
        "Most entries expire unread, with no evictions: requests rarely repeat within the TTL. "
        "The cache stores more than it serves; check that this workload is repetitive."
    )


def _charts(series: list[tuple[int, dict[str, int]]], window: str) -> list[tuple[str, SafeString]]:
    fmt = "%a %H:%M" if window == "7d" else "%H:%M"
    labels = [_local(start).strftime(fmt) for start, _counts in series]  # type: ignore[union-attr]
    values = [counts for _start, counts in series]
    hit_rates = [{"hit_rate": Totals(window=window, counts=c).hit_rate} for c in values]
    latencies = [{"latency": Totals(window=window, counts=c).upstream_latency_ms} for c in values]
    return [
        (
            _("Outcomes"),
            mark_safe(charts.stacked_bars(labels, values, OUTCOME_SERIES, title=_("Calls by outcome"))),  # noqa: S308 - escaped in charts
        ),
        (
            _("Hit rate"),
            mark_safe(  # noqa: S308
                charts.lines(
                    labels,
                    hit_rates,
                    [charts.Series("hit_rate", _("hit rate"), "#2e7d32")],
                    title=_("Hit rate: (hit + wait) / (hit + wait + miss + fallthrough)"),
                    y_max=1.0,
                    y_format=charts.format_percent,
                    empty=_("No cacheable lookups in this window"),
                )
            ),
        ),
        (
            _("Tokens saved"),
            mark_safe(charts.stacked_bars(labels, values, TOKEN_SERIES, title=_("Tokens saved by hits and waits"))),  # noqa: S308
        ),
        (
            _("Upstream latency"),
            mark_safe(  # noqa: S308
                charts.lines(
                    labels,
                    latencies,
                    [charts.Series("latency", _("mean upstream latency"), "#ef6c00")],
                    title=_("Mean upstream latency (ms)"),
                    y_format=lambda v: f"{charts.format_number(v)} ms",
                    empty=_("No upstream calls in this window"),
                )
            ),
        ),
        (
            _("Errors"),
            mark_safe(  # noqa: S308
                charts.stacked_bars(
                    labels,
                    values,
                    ERROR_SERIES,
                    title=_("Errors"),
                    empty=_("No errors in this window"),
                )
            ),
        ),
    ]


# --- audit trail ------------------------------------------------------------------------------


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
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


# --- API keys ---------------------------------------------------------------------------------

# djangorestframework-api-key registers its own APIKey model, which respcache does not use; two
# "API keys" pages would mislead operators, so only respcache's is shown.
if admin.site.is_registered(APIKey):
    admin.site.unregister(APIKey)


@admin.register(ApiKey)
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
        selectors.clear_local_caches()  # a revoked key is refused here at once, elsewhere soon

    @admin.action(permissions=["change"], description=gettext_lazy("Revoke selected API keys"))
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = service.api_key_revoke(queryset)
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
