"""The workload admin's extra pages, added in ``get_urls``: ``<id>/stats/``, ``<id>/bump/``,
``<id>/purge/``, ``<id>/entries/``, ``<id>/entries/<version>/<fingerprint>/`` and its
``…/delete/``; and the purge confirmation page that the Purge action shares.

Each page reads through :mod:`respcache.selectors`, changes through :mod:`respcache.services`,
and renders a template under ``admin/respcache/workload/`` with numbers made into rows and charts
by :mod:`respcache.admin.presenters`. A page that needs Redis says so when Redis is down.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from respcache import selectors, services
from respcache.admin import presenters
from respcache.exceptions import CacheUnavailable
from respcache.models import Workload

FINGERPRINT = re.compile(r"[0-9a-f]{64}")
CURSOR = re.compile(r"[0-9]{1,20}")
TEMPLATES = "admin/respcache/workload/"

if TYPE_CHECKING:  # the mixin's methods run on a ModelAdmin; say so to the type checker only
    _ModelAdmin = admin.ModelAdmin[Workload]
else:
    _ModelAdmin = object


def actor(request: HttpRequest) -> str:
    """Who acts, as the audit trail names them."""
    return request.user.get_username() or "admin"


def _safe_next(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return fallback


class WorkloadPagesMixin(_ModelAdmin):
    """The extra pages of a workload, for a ModelAdmin of Workload that defines
    ``has_bump_permission`` and ``has_purge_permission``.

    The entry browser lists entries to anyone who may view the workload (hashes, sizes, reads,
    TTLs: never what they say); an entry's page shows the stored answer, so it needs
    ``respcache.view_entry_content`` too, and each view of it is in the audit trail."""

    #: Entries listed per page of the entry browser (about: a page is what SCAN returned).
    entries_per_page = 100
    #: Entries the hottest-first list reads at most (a larger workload is sorted among those).
    entries_sort_max = 10_000

    def has_bump_permission(self, request: HttpRequest, obj: Workload | None = None) -> bool:
        raise NotImplementedError

    def has_purge_permission(self, request: HttpRequest, obj: Workload | None = None) -> bool:
        raise NotImplementedError

    def has_view_entry_content_permission(self, request: HttpRequest, obj: Workload | None = None) -> bool:
        return bool(request.user.has_perm("respcache.view_entry_content"))

    def get_urls(self) -> list[URLPattern]:
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
            "has_view_entry_content_permission": self.has_view_entry_content_permission(request, workload),
            **extra,
        }

    # --- stats ---

    def stats_view(self, request: HttpRequest, object_id: str) -> TemplateResponse:
        workload = self._workload(request, object_id)
        window = request.GET.get("window", "1h")
        if window not in presenters.CHART_POINTS:
            messages.error(request, _("Unknown window %(window)s; showing 1h.") % {"window": window})
            window = "1h"
        context = self._context(
            request,
            workload,
            _("Stats: %s") % workload.slug,
            window=window,
            windows=list(presenters.CHART_POINTS),
        )
        try:
            totals = selectors.workloads_numbers([workload.slug], presenters.NUMBER_WINDOWS)[workload.slug]
            series = selectors.workload_series(workload.slug, window, points=presenters.CHART_POINTS[window])
            server = selectors.redis_server_info()
            version = selectors.workload_current_version(workload)
        except CacheUnavailable as exc:
            context["redis_error"] = str(exc)
            return TemplateResponse(request, TEMPLATES + "stats.html", context)
        context.update(
            current_version=version,
            rows=presenters.number_rows(totals),
            shadow_rows=presenters.shadow_rows(totals),
            server=server,
            server_rows=presenters.server_rows(server),
            advice=presenters.advice(totals["24h"], server),
            dead_write_24h=presenters.percent(totals["24h"].dead_write_rate),
            charts=presenters.stats_charts(series, window),
        )
        return TemplateResponse(request, TEMPLATES + "stats.html", context)

    # --- bump and purge ---

    def bump_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        workload = self._workload(request, object_id)
        if not self.has_bump_permission(request, workload):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponse(status=405, headers={"Allow": "POST"})
        version = services.workload_bump(workload, actor=actor(request), user=request.user)
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
                purged = services.workload_purge(workload, actor=actor(request), user=request.user)
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
        return self.purge_confirmation(request, [(workload, count)], action=False)

    def purge_confirmation(
        self, request: HttpRequest, counts: list[tuple[Workload, int]], *, action: bool
    ) -> TemplateResponse:
        """How many entries will go, and a button to go on: posted back to the purge page, or
        (``action``) to the changelist's Purge action with ``post=yes``."""
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
        return TemplateResponse(request, TEMPLATES + "purge_confirmation.html", context)

    # --- the entry browser ---

    def entries_view(self, request: HttpRequest, object_id: str) -> TemplateResponse:
        """Hottest first (the default: the entries' read counters, over at most
        ``entries_sort_max`` entries), or in SCAN order page by page (``?cursor=``); ``?q=``
        keeps the entries whose summary holds the text (with ``view_entry_content`` only: a filter
        over what entries say would otherwise read them out a guess at a time)."""
        workload = self._workload(request, object_id)
        may_read = self.has_view_entry_content_permission(request, workload)
        text = request.GET.get("q", "").strip()[:200] if may_read else ""
        if "cursor" in request.GET:
            return self._entries_in_scan_order(request, workload, text)
        raw_page = request.GET.get("page", "1")
        number = int(raw_page) if raw_page.isdigit() and 0 < len(raw_page) < 7 and int(raw_page) > 0 else 1
        context = self._context(request, workload, _("Entries: %s") % workload.slug, q=text, order="reads")
        try:
            version = selectors.workload_current_version(workload)
            hot = selectors.workload_hot_entries(
                workload, version=version, max_entries=self.entries_sort_max, text=text
            )
        except CacheUnavailable as exc:
            context["redis_error"] = str(exc)
            return TemplateResponse(request, TEMPLATES + "entries.html", context)
        size = self.entries_per_page
        shown = hot.entries[(number - 1) * size : number * size]
        context.update(
            current_version=version,
            hot=hot,
            page_number=number,
            previous_page=number - 1 if number > 1 else None,
            next_page=number + 1 if number * size < len(hot.entries) else None,
            rows=self._entry_rows(request, workload, version, shown),
        )
        return TemplateResponse(request, TEMPLATES + "entries.html", context)

    def _entries_in_scan_order(self, request: HttpRequest, workload: Workload, text: str) -> TemplateResponse:
        raw_cursor = request.GET.get("cursor", "0")
        valid = CURSOR.fullmatch(raw_cursor) is not None and int(raw_cursor) < 2**64  # Redis's range
        cursor = int(raw_cursor) if valid else 0
        if not valid:
            messages.error(request, _("The cursor must be a whole number; starting from the beginning."))
        context = self._context(
            request, workload, _("Entries: %s") % workload.slug, cursor=cursor, q=text, order="scan"
        )
        try:
            version = selectors.workload_current_version(workload)
            page = selectors.workload_entries_page(
                workload, version=version, cursor=cursor, page_size=self.entries_per_page
            )
        except CacheUnavailable as exc:
            context["redis_error"] = str(exc)
            return TemplateResponse(request, TEMPLATES + "entries.html", context)
        entries = page.entries
        if text:
            needle = text.casefold()
            entries = [e for e in entries if e.summary and any(needle in v.casefold() for v in e.summary.values())]
        context.update(current_version=version, page=page, rows=self._entry_rows(request, workload, version, entries))
        return TemplateResponse(request, TEMPLATES + "entries.html", context)

    def _entry_rows(
        self, request: HttpRequest, workload: Workload, version: int, entries: list[Any]
    ) -> list[dict[str, Any]]:
        """The page's rows; a page that shows summaries is a read of them, in the audit trail."""
        now = timezone.now().timestamp()
        summarised = [e.fingerprint for e in entries if e.summary]
        if summarised and self.has_view_entry_content_permission(request, workload):
            services.entry_summaries_viewed(
                workload, version=version, fingerprints=summarised, actor=actor(request), user=request.user
            )
        return [
            presenters.entry_row(
                e,
                url=reverse("admin:respcache_workload_entry", args=[workload.pk, version, e.fingerprint]),
                now=now,
            )
            for e in entries
        ]

    def entry_view(self, request: HttpRequest, object_id: str, version: int, fingerprint: str) -> TemplateResponse:
        workload = self._workload(request, object_id)
        if not self.has_view_entry_content_permission(request, workload):
            raise PermissionDenied
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
            return TemplateResponse(request, TEMPLATES + "entry.html", context)
        if found is None:
            raise Http404(_("This entry is gone (expired, evicted, purged or deleted)."))
        info, entry = found
        services.entry_viewed(
            workload, version=version, fingerprint=fingerprint, actor=actor(request), user=request.user
        )
        context.update(
            info=info,
            entry=entry,
            content=presenters.entry_content(info.summary, entry.message if entry is not None else None),
            stored_at=presenters.local_time(info.stored_at),
            ttl=presenters.duration(info.ttl_ms / 1000) if info.ttl_ms is not None else "–",
        )
        return TemplateResponse(request, TEMPLATES + "entry.html", context)

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
            deleted = services.entry_delete(
                workload, version=version, fingerprint=fingerprint, actor=actor(request), user=request.user
            )
        except CacheUnavailable as exc:
            self.message_user(request, _("Redis is unavailable, nothing was deleted: %s") % exc, messages.ERROR)
            return HttpResponseRedirect(entries_url)
        if deleted:
            self.message_user(request, _("Deleted entry %s.") % fingerprint, messages.SUCCESS)
        else:
            self.message_user(request, _("Entry %s was already gone.") % fingerprint, messages.WARNING)
        return HttpResponseRedirect(entries_url)
