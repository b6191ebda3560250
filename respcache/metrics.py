"""``/metrics``: the shared counters in Prometheus text format, the same from every worker.

Everything exported is read from Redis at scrape time (the all-time totals hash each call
increments and the one-hour window of the minute buckets, of every workload in one round trip:
``selectors.workloads_metrics``), never from this process's memory, so any worker on any machine
answers a scrape with the same numbers and a restarted worker loses nothing. Counters (``*_total``)
only grow; the three numbers of the contract are also exported as gauges over the last hour
(``window="1h"``), the dead-write rate only there (an entry is known to be dead only once its TTL
has passed, which a counter cannot say).

Samples, each labelled ``workload``:

- ``respcache_requests_total{outcome}``: hit, wait (lock waits that were served), miss,
  fallthrough (lock waits that gave up after ``wait_max``), bypass, refresh;
- ``respcache_upstream_latency_seconds`` (summary: ``_count`` upstream calls, ``_sum`` seconds),
  ``respcache_upstream_errors_total``, ``respcache_cache_errors_total``,
  ``respcache_budget_refused_total`` (calls the workload's budget refused with 429);
- ``respcache_tokens_saved_total{kind="input"|"output"}``;
- ``respcache_entries_written_total``, ``respcache_entries_first_read_total``;
- ``respcache_hit_rate``, ``respcache_stampede_rate``, ``respcache_dead_write_rate`` (``window``),
  absent while undefined (nothing to divide by);
- ``respcache_workload_key_version``, ``respcache_workload_enabled``, ``respcache_workload_shadow``;
- shadow mode: ``respcache_shadow_would_hit_total``, ``respcache_shadow_agree_total``,
  ``respcache_shadow_would_save_tokens_total{kind}``, ``respcache_shadow_agreement`` (``window``);
- drift: ``respcache_hit_rate_drop_points`` (the last hour's hit rate below the 24 hours before
  it, in points; absent while undefined), ``respcache_drift_alert`` (0/1) and
  ``respcache_drift_threshold_points`` (the workload's policy);

and ``respcache_redis_up`` (0: Redis did not answer this scrape; the counters are left out).
Set ``RESPCACHE["METRICS_TOKEN"]`` to require ``Authorization: Bearer <token>``. In production
(``app_settings.production``) without a token, every scrape is refused with 403 unless
``RESPCACHE["METRICS_PUBLIC"]`` opens it on purpose; ``check --deploy`` says so (respcache.E009).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import SummaryMetricFamily

from respcache import selectors, stats
from respcache.conf import app_settings
from respcache.drift import Drift
from respcache.exceptions import CacheUnavailable

logger = logging.getLogger(__name__)

#: The window of the rate gauges: short enough to move when something breaks, long enough to
#: hold an entry's expiry for the dead-write rate. 60 minute buckets per workload per scrape.
GAUGE_WINDOW = "1h"


class RespcacheCollector:
    """A prometheus_client collector reading the shared counters of every workload."""

    def collect(self) -> Iterator[Metric]:
        workloads = selectors.workloads_list()
        slugs = [w.slug for w in workloads]
        try:
            numbers = selectors.workloads_metrics(slugs, GAUGE_WINDOW)  # one Redis round trip
        except CacheUnavailable as exc:
            logger.warning("respcache: /metrics could not read Redis (%s)", exc)
            yield GaugeMetricFamily("respcache_redis_up", "Whether Redis answered this scrape.", value=0)
            yield from _policy_metrics(workloads)
            return
        yield GaugeMetricFamily("respcache_redis_up", "Whether Redis answered this scrape.", value=1)

        requests = CounterMetricFamily("respcache_requests", "Calls by cache outcome.", labels=["workload", "outcome"])
        latency = SummaryMetricFamily(
            "respcache_upstream_latency_seconds", "Upstream call latency.", labels=["workload"]
        )
        upstream_errors = CounterMetricFamily(
            "respcache_upstream_errors", "Calls answered with an upstream error.", labels=["workload"]
        )
        cache_errors = CounterMetricFamily(
            "respcache_cache_errors",
            "Redis failures the calls were served around (fail-open).",
            labels=["workload"],
        )
        budget_refused = CounterMetricFamily(
            "respcache_budget_refused",
            "Calls that would have gone upstream, refused by the workload's budget (429).",
            labels=["workload"],
        )
        tokens_saved = CounterMetricFamily(
            "respcache_tokens_saved",
            "Tokens hits and waits did not spend (stored usage).",
            labels=["workload", "kind"],
        )
        written = CounterMetricFamily("respcache_entries_written", "Entries stored.", labels=["workload"])
        first_read = CounterMetricFamily(
            "respcache_entries_first_read", "Entries read at least once.", labels=["workload"]
        )
        rates = {
            name: GaugeMetricFamily(f"respcache_{name}", help_text, labels=["workload", "window"])
            for name, help_text in (
                ("hit_rate", "(hit + wait) / (hit + wait + miss + fallthrough) over the window."),
                ("stampede_rate", "wait / miss over the window."),
                ("dead_write_rate", "Entries that expired unread / entries that expired, over the window."),
            )
        }
        for slug in slugs:
            counts = numbers.all_time[slug]
            for outcome in stats.OUTCOMES:
                requests.add_metric([slug, outcome], counts[outcome])
            latency.add_metric([slug], count_value=counts["upstream_calls"], sum_value=counts["upstream_ms"] / 1000)
            upstream_errors.add_metric([slug], counts["upstream_error"])
            cache_errors.add_metric([slug], counts["cache_error"])
            budget_refused.add_metric([slug], counts["budget_refused"])
            tokens_saved.add_metric([slug, "input"], counts["saved_in"])
            tokens_saved.add_metric([slug, "output"], counts["saved_out"])
            written.add_metric([slug], counts["written"])
            first_read.add_metric([slug], counts["first_read"])
            window = numbers.window[slug]
            for name, family in rates.items():
                value = getattr(window, name)
                if value is not None:
                    family.add_metric([slug, GAUGE_WINDOW], value)
        yield from (requests, latency, upstream_errors, cache_errors, budget_refused, tokens_saved, written, first_read)
        yield from rates.values()
        yield from _shadow_metrics(slugs, numbers)
        yield from _drift_metrics(workloads, numbers)
        yield from _policy_metrics(workloads)


def _shadow_metrics(slugs: list[str], numbers: selectors.MetricsNumbers) -> Iterator[Metric]:
    would_hit = CounterMetricFamily(
        "respcache_shadow_would_hit",
        "Shadow calls whose key had a stored entry (they would have hit).",
        labels=["workload"],
    )
    agree = CounterMetricFamily(
        "respcache_shadow_agree",
        "Of those, calls whose fresh answer equalled the stored one (content blocks, stop reason).",
        labels=["workload"],
    )
    would_save = CounterMetricFamily(
        "respcache_shadow_would_save_tokens",
        "Tokens the would-be hits would have saved (the stored usage).",
        labels=["workload", "kind"],
    )
    agreement = GaugeMetricFamily(
        "respcache_shadow_agreement", "agree / would_hit over the window.", labels=["workload", "window"]
    )
    for slug in slugs:
        counts = numbers.all_time[slug]
        would_hit.add_metric([slug], counts["would_hit"])
        agree.add_metric([slug], counts["agree"])
        would_save.add_metric([slug, "input"], counts["would_save_in"])
        would_save.add_metric([slug, "output"], counts["would_save_out"])
        value = numbers.window[slug].agreement
        if value is not None:
            agreement.add_metric([slug, GAUGE_WINDOW], value)
    yield from (would_hit, agree, would_save, agreement)


def _drift_metrics(workloads: list[Any], numbers: selectors.MetricsNumbers) -> Iterator[Metric]:
    drop = GaugeMetricFamily(
        "respcache_hit_rate_drop_points",
        "Points the last hour's hit rate is below the 24 hours before it (negative: above).",
        labels=["workload"],
    )
    alert = GaugeMetricFamily(
        "respcache_drift_alert", "1 when the drop exceeds the workload's drift threshold.", labels=["workload"]
    )
    threshold = GaugeMetricFamily(
        "respcache_drift_threshold_points", "The workload's drift threshold, in points.", labels=["workload"]
    )
    for workload in workloads:
        slug = workload.slug
        found = Drift(numbers.window[slug], numbers.baseline[slug], workload.drift_threshold_points)
        if found.drop_points is not None:
            drop.add_metric([slug], found.drop_points)
        alert.add_metric([slug], 1 if found.alert else 0)
        threshold.add_metric([slug], workload.drift_threshold_points)
    yield from (drop, alert, threshold)


def _policy_metrics(workloads: list[Any]) -> Iterator[Metric]:
    version = GaugeMetricFamily("respcache_workload_key_version", "The workload's key version.", labels=["workload"])
    enabled = GaugeMetricFamily("respcache_workload_enabled", "1 when caching is on.", labels=["workload"])
    shadow = GaugeMetricFamily(
        "respcache_workload_shadow", "1 when the workload is in shadow mode.", labels=["workload"]
    )
    for workload in workloads:
        version.add_metric([workload.slug], workload.key_version)
        enabled.add_metric([workload.slug], 1 if workload.enabled else 0)
        shadow.add_metric([workload.slug], 1 if workload.shadow else 0)
    yield from (version, enabled, shadow)


def _authorized(request: HttpRequest) -> bool:
    token = app_settings.METRICS_TOKEN
    if not token:
        return True
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), str(token).encode())


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition (text format, or OpenMetrics when the scraper asks for it)."""
    if app_settings.metrics_closed:
        return HttpResponse(
            "/metrics is closed: set RESPCACHE_METRICS_TOKEN (scrapers send it as a Bearer token), "
            "or RESPCACHE_METRICS_PUBLIC=1 to serve it without one on purpose.\n",
            status=403,
            content_type="text/plain",
        )
    if not _authorized(request):
        response = HttpResponse("authentication required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RespcacheCollector())
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)
