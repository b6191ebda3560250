"""The workload changelist and the shadow numbers in headless Chromium (the setup of
test_admin_browser.py): at 1280 px the changelist of several workloads with long slugs does not
scroll sideways, the numbers people scan first are left of the policy, the drift banner shows,
and a shadow workload's stats page shows its would-be hits and agreement. Screenshots go to
``.run/`` (docs/admin-changelist.png and docs/admin-shadow.png are copies of them).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from respcache import services, stats
from respcache.models import Workload
from tests.api.test_views import create
from tests.conftest import ask
from tests.test_admin_browser import CHROMIUM, CHROMIUM_ARGS, _sync_playwright
from tests.test_drift import day_then_hour

RUN = Path(settings.BASE_DIR) / ".run"
PASSWORD = "correct horse battery staple"

pytestmark = pytest.mark.django_db(transaction=True)


def _login(page: Any, base: str) -> None:
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")


def _workloads(sdk: Any, fake: Any) -> Workload:
    """Several workloads with long slugs and live numbers; ``intents`` in shadow mode, with one
    answer that changed; one workload whose hit rate fell."""
    client = sdk()
    for text in ("reset", "refund", "reset", "reset"):
        create(client, ask(text))
    services.workload_upsert(slug="intents", shadow=True, actor="test")
    for _ in range(3):
        create(client, ask("reset"))
    fake.salt = "a changed answer"
    create(client, ask("reset"))
    now = time.time()
    for n in range(4):
        slug = f"customer-support-ticket-classifier-eu-west-{n}-with-a-very-long-name"[: 40 + 6 * n]
        services.workload_upsert(slug=slug, ttl_seconds=3600 * (n + 1), actor="test")
        day_then_hour(slug, before=(900 + n, 100), last_hour=(300, 100 * n), now=now)
    workload = Workload.objects.get(slug="intents")
    assert stats.totals("intents", "1h")["would_hit"] == 4
    return workload


def test_changelist_fits_1280_px_with_shadow_numbers_and_drift_banner(
    live_server: Any, sdk: Any, fake: Any, workload: Workload, django_user_model: Any
) -> None:
    sync_playwright = _sync_playwright()
    django_user_model.objects.create_superuser("ops", "ops@example.com", PASSWORD)
    workload = _workloads(sdk, fake)
    base = live_server.url.replace("localhost", "127.0.0.1")
    RUN.mkdir(parents=True, exist_ok=True)

    # No ORM calls inside this block: Playwright's sync API runs an event loop on this thread.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            _login(page, base)
            page.goto(f"{base}/admin/respcache/workload/")
            page.locator("#result_list").wait_for(state="visible")
            page.screenshot(path=str(RUN / "admin-changelist.png"), full_page=True)
            scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert scroll <= inner, f"the changelist scrolls sideways: {scroll} > {inner}"
            # Nor does the results box (its own overflow would hide a sideways scroll).
            table = page.locator("#result_list").bounding_box()
            assert table is not None and table["x"] + table["width"] <= inner, table
            headers = page.locator("#result_list thead th").all_inner_texts()
            order = [h.strip().lower() for h in headers]
            first = next(i for i, h in enumerate(order) if h.startswith("hit 1"))
            assert first < next(i for i, h in enumerate(order) if h.startswith("enabled"))
            assert order[first + 1].startswith("tokens saved") and order[first + 2].startswith("requests")
            row = page.locator("#result_list tr", has_text="intents").first
            assert "75.0% of 4" in row.locator("td.field-shadow_24h").inner_text()
            banner = page.locator("#rc-drift")
            assert banner.is_visible()
            text = banner.inner_text()
            assert "eu-west-3" in text and "down " in text and "eu-west-0" not in text

            page.goto(f"{base}/admin/respcache/workload/{workload.pk}/stats/")
            shadow = page.locator("#rc-shadow")
            shadow.wait_for(state="visible")
            assert page.locator("#rc-shadow-on").is_visible()  # the policy line says so too
            numbers = shadow.inner_text()
            assert "would have hit" in numbers and "75.0%" in numbers
            shadow.scroll_into_view_if_needed()
            page.screenshot(path=str(RUN / "admin-shadow.png"), full_page=True)
        finally:
            browser.close()
    assert (RUN / "admin-changelist.png").stat().st_size > 10_000
