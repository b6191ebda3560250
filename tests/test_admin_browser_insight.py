"""The miss-reasons chart and an entry's page in headless Chromium (the fixtures and skips of
tests/test_admin_browser.py). Saves docs/admin-miss-reasons.png and docs/admin-entry.png."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.conf import settings

from respcache import selectors, services
from respcache.models import Workload
from tests.conftest import ask
from tests.test_admin_browser import CHROMIUM, CHROMIUM_ARGS, _sync_playwright

DOCS = Path(settings.BASE_DIR) / "docs"

pytestmark = pytest.mark.django_db(transaction=True)


def _misses_over_the_hour(workload: Workload, now: float) -> None:
    """Misses dated over the last hour: new questions, a system prompt changed half-way (every
    question misses once more), and a few calls with another max_tokens."""
    policy = selectors.workload_policy(workload.slug)
    assert policy is not None
    for minute in range(55, 0, -5):
        system = "You answer support questions." if minute > 30 else "You answer support questions briefly."
        for n in range(3):
            extra = {"max_tokens": 32} if minute % 20 == 0 and n == 0 else {}
            body = ask(f"question {n + minute % 15}", system=system, **extra)
            services.cached_message_create(
                policy=policy, body=body, raw_body=orjson.dumps(body), clock=lambda m=minute: now - 60 * m
            )


def test_miss_reasons_chart_and_entry_page_in_chromium(
    live_server: Any, workload: Workload, django_user_model: Any
) -> None:
    sync_playwright = _sync_playwright()
    password = "correct horse battery staple"
    django_user_model.objects.create_superuser("ops", "ops@example.com", password)
    _misses_over_the_hour(workload, time.time())
    reasons = selectors.workload_totals(workload.slug, "1h").miss_reasons()
    assert reasons["new"] and reasons["system"] and reasons["max_tokens"]
    base = live_server.url.replace("localhost", "127.0.0.1")

    # No ORM calls inside this block: Playwright's sync API runs an event loop on this thread.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/admin/login/?next=/admin/")
            page.fill("#id_username", "ops")
            page.fill("#id_password", password)
            page.click("input[type=submit]")
            page.wait_for_url(f"{base}/admin/")

            page.goto(f"{base}/admin/respcache/workload/{workload.pk}/stats/")
            chart = page.locator("section.rc-card", has=page.locator('g[data-series="miss_system"]'))
            chart.wait_for(state="visible")
            box = chart.bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 80
            for series in ("miss_new", "miss_system", "miss_max_tokens"):
                assert chart.locator(f'g[data-series="{series}"] rect').count() > 0, series
            assert "Miss reasons" in chart.locator("h2").inner_text()
            chart.screenshot(path=str(DOCS / "admin-miss-reasons.png"))

            page.goto(f"{base}/admin/respcache/workload/{workload.pk}/entries/")
            rows = page.locator("#result_list tbody tr")
            assert rows.count() > 1
            assert "You answer support questions" in rows.first.inner_text()
            rows.first.locator("a").first.click()
            page.wait_for_load_state()
            summary = page.inner_text("#rc-entry-summary")
            assert "You answer support questions" in summary and "question" in summary
            assert page.locator("pre.rc-json").is_visible()
            page.screenshot(path=str(DOCS / "admin-entry.png"), full_page=True)
        finally:
            browser.close()

    assert (DOCS / "admin-miss-reasons.png").stat().st_size > 5_000
    assert (DOCS / "admin-entry.png").stat().st_size > 5_000
