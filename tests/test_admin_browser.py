"""The admin in a real browser: Debian's headless Chromium, driven by Playwright (never a browser
it downloads). Logs in, reads a workload's stats page with real traffic behind it, sees a chart,
bumps the key version and checks that the next call is a miss. Saves a screenshot of the stats
page to ``.run/admin-stats.png`` (docs/admin-stats.png is a copy of one).

Skips when Chromium or Playwright is missing, except under CI (``CI=true``), where it fails:
``.ci/run`` installs Debian's ``chromium`` and ``make test`` the ``playwright`` package.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.conf import settings

from respcache import selectors, services
from respcache.models import Workload
from tests.api.test_views import create
from tests.conftest import ask

CHROMIUM = os.environ.get("RESPCACHE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(settings.BASE_DIR) / ".run" / "admin-stats.png"

pytestmark = pytest.mark.django_db(transaction=True)


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI must run the browser test: .ci/run installs chromium)")
    pytest.skip(reason)


def _sync_playwright() -> Any:
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set RESPCACHE_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed: pip install -e '.[test]'")
    return sync_playwright


def _backfill(workload: Workload, now: float) -> None:
    """Calls through the same service, dated over the last hour, so the hour's charts have a
    shape: a prompt set that repeats more and more, as a warming cache sees it."""
    policy = selectors.workload_policy(workload.slug)
    assert policy is not None
    for minute in range(58, 0, -1):
        for n in range(2 + (58 - minute) // 10):
            text = f"intent #{(minute * 7 + n) % (4 + minute // 6)}"
            body = ask(text)
            services.cached_message_create(
                policy=policy,
                body=body,
                raw_body=orjson.dumps(body),
                clock=lambda m=minute: now - 60 * m,
            )


def test_admin_stats_chart_and_bump_in_chromium(
    live_server: Any, sdk: Any, fake: Any, workload: Workload, django_user_model: Any
) -> None:
    sync_playwright = _sync_playwright()
    password = "correct horse battery staple"
    django_user_model.objects.create_superuser("ops", "ops@example.com", password)
    # A 10-minute TTL: the entries written early in the hour have expired by now (by the
    # counters' clock), so the page has a measured dead-write rate to show.
    workload, _ = services.workload_upsert(slug=workload.slug, ttl_seconds=600, actor="test")
    _backfill(workload, time.time())
    client = sdk()
    live = [create(client, ask(text)).headers["x-respcache"] for text in ("reset", "refund", "reset", "reset")]
    live.append(create(client, ask("chat"), extra_body={"temperature": 0.8}).headers["x-respcache"])
    assert live == ["miss", "miss", "hit", "hit", "bypass"]
    base = live_server.url.replace("localhost", "127.0.0.1")
    stats_url = f"{base}/admin/respcache/workload/{workload.pk}/stats/"

    # No ORM calls inside this block: Playwright's sync API runs an event loop on this thread.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.goto(f"{base}/admin/login/?next=/admin/")
            page.fill("#id_username", "ops")
            page.fill("#id_password", password)
            page.click("input[type=submit]")
            page.wait_for_url(f"{base}/admin/")

            page.goto(stats_url)
            outcomes = page.locator("svg.rc-chart-bars").first
            outcomes.wait_for(state="visible")
            box = outcomes.bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 80
            assert page.locator('svg.rc-chart-bars g[data-series="hit"] rect').count() > 0
            assert page.locator('svg.rc-chart-bars g[data-series="miss"] rect').count() > 0
            assert page.locator("svg.rc-chart-lines path").count() >= 1  # the hit-rate line
            assert page.inner_text("#rc-key-version") == "1"
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            page.click("#rc-bump")
            page.wait_for_load_state()
            assert page.url == stats_url
            assert "Bumped intents to key version 2" in page.inner_text("ul.messagelist")
            assert page.inner_text("#rc-key-version") == "2"
        finally:
            browser.close()

    assert SCREENSHOT.stat().st_size > 10_000
    assert create(client, ask("reset")).headers["x-respcache"] == "miss"
    workload.refresh_from_db()
    assert workload.key_version == 2
    assert workload.audit_entries.get(action="bump").actor == "ops"
