"""The admin console through Django's test client, against the real Redis and database: live
numbers, actions and their permissions, stats, the entry browser, the audit trail, API keys."""

from __future__ import annotations

import logging
import re
import time
import xml.etree.ElementTree as ET
from typing import Any

import orjson
import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from respcache import keys, selectors, services, stats, store
from respcache.models import ApiKey, AuditEntry, Workload
from tests.conftest import ask, redis_down

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/respcache/workload/"


def call(client: Client, key: str, text: str = "password reset", slug: str = "intents", **extra: Any) -> Any:
    """A Messages API call through the endpoint (simulated upstream), as a caller makes it."""
    return client.post(
        f"/w/{slug}/v1/messages",
        data=orjson.dumps(ask(text, **extra)),
        content_type="application/json",
        HTTP_X_API_KEY=key,
    )


def status(response: Any) -> str:
    assert response.status_code == 200, response.content
    return str(response["X-Respcache"])


def url(name: str, *args: Any) -> str:
    return reverse(f"admin:respcache_workload_{name}", args=args)


def html(response: Any) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def changelist_cells(page: str, slug: str) -> list[str]:
    """The cells of ``slug``'s row in the changelist table (after its checkbox and slug)."""
    table = page[page.index('id="result_list"') :]
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S):
        if f">{slug}</a>" in row:
            return [c.strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    raise AssertionError(f"no row for {slug}")


@pytest.fixture
def staff(db: Any) -> Any:
    """A logged-in staff client with the given respcache permissions (codenames)."""

    def make(*codenames: str, username: str = "operator") -> Client:
        user = User.objects.create_user(username, password="pw", is_staff=True)
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="respcache", codename__in=codenames)
        )
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def caller() -> Client:
    return Client()


# --- the changelist: live numbers -------------------------------------------------------------


def test_changelist_shows_live_numbers_next_to_the_policy(
    admin_client: Client, caller: Client, workload: Workload, api_key: str
) -> None:
    assert [status(call(caller, api_key)) for _ in range(4)] == ["miss", "hit", "hit", "hit"]
    status(call(caller, api_key, temperature=0.9))  # bypass: a request, not a lookup
    page = html(admin_client.get(CHANGELIST))
    cells = changelist_cells(page, "intents")
    # checkbox, hit 1h, tokens saved 24h, requests 24h, hit 24h, stampede 24h, dead-write 24h,
    # shadow 24h, enabled, ttl, key version, links: the numbers people scan first on the left
    saved = stats.totals("intents", "24h")
    assert saved["saved_in"] > 0 and cells[2] == f"{saved['saved_in']} / {saved['saved_out']}"
    assert [cells[1], *cells[3:8]] == ["75.0%", "5", "75.0%", "0.0%", "–", "–"]
    assert 'alt="True"' in cells[8]
    assert cells[9:11] == ["1 d", "1"]
    assert "within 0 s" in page  # the propagation time, from LOCAL_CACHE_SECONDS


def test_changelist_reads_hour_buckets_not_1440_minute_buckets_per_row(
    admin_client: Client, make_workload: Any, redis_db: Any
) -> None:
    for n in range(5):
        make_workload(f"w{n}")
    before = redis_db.info("commandstats")
    html(admin_client.get(CHANGELIST))
    after = redis_db.info("commandstats")
    hgetalls = after["cmdstat_hgetall"]["calls"] - before.get("cmdstat_hgetall", {}).get("calls", 0)
    # 1h: 61 minute buckets; 24h and the drift baseline (the 24 h before the hour): at most 84
    # each (hour buckets inside, minute buckets at the edges).
    assert 5 * (61 + 24 + 24) <= hgetalls <= 5 * (61 + 84 + 84)


def test_window_totals_count_exactly_the_events_in_the_window(db: Any) -> None:
    now = 1_800_000_000 + 1234  # an hour boundary is not aligned with the window's edges
    offsets = (0, 59, 61, 299, 301, 3599, 3601, 7300, 40_000, 86_000, 86_399, 86_500, 200_000, 600_000)
    for offset in offsets:
        stats.count("w", now - offset, hit=1, miss=offset % 3, saved_in=offset)
    fast = stats.window_totals(["w"], ("5m", "1h", "24h", "7d"), now=now)["w"]
    for window, seconds in stats.WINDOWS.items():
        # The oracle: an event counts when its bucket overlaps the window (minute buckets up to
        # 24 h, hour buckets for 7 d).
        width = 60 if seconds <= 86400 else 3600
        first = now - seconds + 1
        inside = [o for o in offsets if (now - o) - (now - o) % width >= first - first % width]
        assert fast[window]["hit"] == len(inside), window
        assert fast[window]["saved_in"] == sum(inside), window
        assert stats.totals("w", window, now=now).counts == fast[window].counts


def test_window_totals_do_not_count_entries_still_alive_as_dead(db: Any) -> None:
    now = 1_800_000_000 + 60  # a minute into an hour
    keys_, ttls = stats.expiry_bucket_keys("w", now, ttl_seconds=1200)  # expires in 20 minutes
    redis = store.client()
    for key, ttl in zip(keys_, ttls, strict=True):
        redis.hincrby(key, "exp_written", 1)
        redis.expire(key, ttl)
    assert store.client().hget(keys_[1], "exp_written") == b"1"  # the hour bucket holds it
    assert stats.totals("w", "7d", now=now)["exp_written"] == 0
    fast = stats.window_totals(["w"], ("1h", "24h", "7d"), now=now)["w"]
    assert [fast[w]["exp_written"] for w in ("1h", "24h", "7d")] == [0, 0, 0]
    later = stats.window_totals(["w"], ("1h", "24h", "7d"), now=now + 1300)["w"]
    assert [later[w]["exp_written"] for w in ("1h", "24h", "7d")] == [1, 1, 1]


def test_redis_down_shows_pages_with_a_warning_not_a_500(
    admin_client: Client, workload: Workload, settings: Any
) -> None:
    settings.CACHES = redis_down(settings.CACHES)
    page = html(admin_client.get(CHANGELIST))
    assert "Redis is unavailable" in page and "intents" in page
    assert "Redis is unavailable" in html(admin_client.get(url("stats", workload.pk)))
    assert "Redis is unavailable" in html(admin_client.get(url("entries", workload.pk)))


# --- dead-write rate and the Redis server ------------------------------------------------------


def test_dead_write_rate_is_measured_and_shown_with_the_redis_server(admin_client: Client, make_workload: Any) -> None:
    workload = make_workload("intents", ttl_seconds=60)
    policy = selectors.workload_policy("intents")
    assert policy is not None
    written_at = time.time() - 7200  # two hours ago, so these entries' expiry has passed

    def create(text: str) -> str:
        body = ask(text)
        return services.cached_message_create(
            policy=policy, body=body, raw_body=orjson.dumps(body), clock=lambda: written_at
        ).status

    assert [
        create("read once"),
        create("read once"),
        create("never read"),
        create("never read 2"),
    ] == [
        "miss",
        "hit",
        "miss",
        "miss",
    ]
    day = stats.totals("intents", "24h")
    assert (day["exp_written"], day["exp_read"]) == (3, 1)
    assert day.dead_write_rate == pytest.approx(2 / 3)

    row = html(admin_client.get(CHANGELIST))
    assert "66.7%" in row
    page = html(admin_client.get(url("stats", workload.pk)))
    redis_panel = page[page.index('id="rc-redis"') :]
    info = store.server_info()
    assert info.maxmemory_policy and info.used_memory and info.expired_keys is not None
    for label in ("used memory", "maxmemory", "maxmemory-policy", "evicted keys", "expired keys"):
        assert label in redis_panel
    assert info.maxmemory_policy in redis_panel
    assert "66.7%" in redis_panel
    assert "Most entries expire unread" in redis_panel or "evicts keys" in redis_panel


def test_server_info_survives_a_redis_that_refuses_info_and_config(redis_db: Any) -> None:
    """Managed Redis often refuses CONFIG (and sometimes INFO): say so, do not fail."""
    import redis

    from tests.settings import TEST_REDIS_URL

    name = "respcache-test-limited"
    redis_db.execute_command("ACL", "SETUSER", name, "reset", "on", ">pw", "~*", "+@all", "-info", "-config")
    try:
        limited = redis.Redis.from_url(TEST_REDIS_URL, username=name, password="pw")
        info = store.server_info(limited)
        limited.close()
    finally:
        redis_db.execute_command("ACL", "DELUSER", name)
    assert info.refused == ("INFO memory", "INFO stats", "CONFIG GET")
    assert info.used_memory is None and info.maxmemory_policy == "" and info.evicted_keys is None
    full = store.server_info()
    assert full.refused == () and full.maxmemory is not None and full.evicted_keys is not None


# --- the stats page ----------------------------------------------------------------------------


def _svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(svg) for svg in re.findall(r"<svg xmlns=\S+ class=\"rc-chart.*?</svg>", page, re.S)]


def test_stats_page_has_charts_of_outcomes_hit_rate_tokens_latency_and_errors(
    admin_client: Client, caller: Client, workload: Workload, api_key: str
) -> None:
    statuses = [status(call(caller, api_key, t)) for t in ("a", "a", "a", "b")]
    statuses.append(status(call(caller, api_key, "c", temperature=1)))
    assert statuses == ["miss", "hit", "hit", "miss", "bypass"]
    page = html(admin_client.get(url("stats", workload.pk)))
    charts = _svgs(page)
    ns = "{http://www.w3.org/2000/svg}"
    titles = [c.find(f"{ns}title").text for c in charts]  # type: ignore[union-attr]
    assert titles == [
        "Calls by outcome",
        "Hit rate: (hit + wait) / (hit + wait + miss + fallthrough)",
        "Tokens saved by hits and waits",
        "Mean upstream latency (ms)",
        "Misses by why they missed: new input, or what the closest stored request differs in",
        "Errors",
    ]

    def series_total(chart: ET.Element, name: str) -> float:
        group = next(g for g in chart.iter(f"{ns}g") if g.get("data-series") == name)
        return sum(float(e.get("data-value", 0)) for e in group)

    outcomes, hit_rate, tokens, _latency, misses, errors = charts
    assert {n: series_total(outcomes, n) for n in ("hit", "miss", "bypass", "wait")} == {
        "hit": 2,
        "miss": 2,
        "bypass": 1,
        "wait": 0,
    }
    assert series_total(tokens, "saved_in") == stats.totals("intents", "1h")["saved_in"] > 0
    assert series_total(misses, "miss_new") == 1 and series_total(misses, "miss_messages") == 1  # "a", then "b"
    assert series_total(errors, "upstream_error") == 0 and b"No errors in this window" in ET.tostring(errors)
    points = [float(c.get("data-value")) for c in hit_rate.iter(f"{ns}circle")]  # type: ignore[arg-type]
    assert points and all(0 <= p <= 1 for p in points)
    assert "50.0%" in page  # the 1h hit rate in the numbers table: 2 hits of 4 lookups
    for window in ("24h", "7d"):
        assert len(_svgs(html(admin_client.get(url("stats", workload.pk), {"window": window})))) == 6


def test_stats_page_with_an_unknown_window_says_so(admin_client: Client, workload: Workload) -> None:
    page = html(admin_client.get(url("stats", workload.pk), {"window": "3w"}, follow=True))
    assert "Unknown window 3w" in page and len(_svgs(page)) == 6


def test_unknown_workload_pages_are_404(admin_client: Client, db: Any) -> None:
    assert admin_client.get(url("stats", 999)).status_code == 404
    assert admin_client.get(url("entries", 999)).status_code == 404


# --- actions: bump, purge, enable, disable -----------------------------------------------------


def test_bump_action_bumps_audits_and_the_next_call_misses(
    admin_client: Client, caller: Client, workload: Workload, api_key: str, redis_db: Any
) -> None:
    assert [status(call(caller, api_key)) for _ in range(2)] == ["miss", "hit"]
    response = admin_client.post(
        CHANGELIST, {"action": "bump_key_version", "_selected_action": [workload.pk]}, follow=True
    )
    assert "Bumped the key version of 1 workload: intents → 2." in html(response)
    workload.refresh_from_db()
    assert workload.key_version == 2
    assert int(redis_db.get(store.version_key("intents"))) == 2
    entry = AuditEntry.objects.get(action=AuditEntry.Action.BUMP)
    assert (entry.actor, entry.before, entry.after, entry.workload_slug) == (
        "admin",
        {"key_version": 1},
        {"key_version": 2},
        "intents",
    )
    assert status(call(caller, api_key)) == "miss"


def test_bump_button_on_the_stats_page(admin_client: Client, caller: Client, workload: Workload, api_key: str) -> None:
    status(call(caller, api_key))
    page = html(admin_client.get(url("stats", workload.pk)))
    assert 'id="rc-bump"' in page and 'id="rc-purge"' in page
    assert admin_client.get(url("bump", workload.pk)).status_code == 405
    response = admin_client.post(url("bump", workload.pk), {"next": "https://evil.example/"})
    assert response.status_code == 302 and response["Location"] == url("stats", workload.pk)
    workload.refresh_from_db()
    assert workload.key_version == 2 and status(call(caller, api_key)) == "miss"


def test_purge_action_confirms_with_the_count_then_purges(
    admin_client: Client, caller: Client, make_workload: Any, make_key: Any, redis_db: Any
) -> None:
    intents, other = make_workload("intents"), make_workload("other")
    key = make_key(intents, other)
    for text in ("a", "b", "c"):
        status(call(caller, key, text))
    services.workload_bump(intents, actor="test")
    status(call(caller, key, "a"))  # an entry of the new key version too: purge takes all
    status(call(caller, key, "z", slug="other"))

    confirm = html(admin_client.post(CHANGELIST, {"action": "purge_entries", "_selected_action": [intents.pk]}))
    assert "Are you sure? 4 stored entries will be deleted now" in confirm
    assert store.count_entries("intents") == 4 and not AuditEntry.objects.filter(action="purge").exists()

    done = admin_client.post(
        CHANGELIST,
        {"action": "purge_entries", "_selected_action": [intents.pk], "post": "yes"},
        follow=True,
    )
    assert "Purged 4 entries from intents." in html(done)
    assert store.count_entries("intents") == 0 and store.count_entries("other") == 1
    assert not list(redis_db.scan_iter(match=store.full_key("respcache:m:intents:*")))
    assert AuditEntry.objects.get(action="purge").entries_purged == 4
    assert status(call(caller, key, "a")) == "miss"


def test_purge_button_confirms_then_purges(
    admin_client: Client, caller: Client, workload: Workload, api_key: str
) -> None:
    status(call(caller, api_key, "a"))
    status(call(caller, api_key, "b"))
    assert "2 stored entries will be deleted" in html(admin_client.get(url("purge", workload.pk)))
    assert store.count_entries("intents") == 2
    response = admin_client.post(url("purge", workload.pk), follow=True)
    assert "Purged 2 entries from intents." in html(response)
    assert store.count_entries("intents") == 0
    assert AuditEntry.objects.get(action="purge").entries_purged == 2


def test_enable_and_disable_actions_are_audited_and_take_effect(
    admin_client: Client, caller: Client, workload: Workload, api_key: str, settings: Any
) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "LOCAL_CACHE_SECONDS": 60}
    assert status(call(caller, api_key)) == "miss"  # the policy is now kept in this process
    admin_client.post(CHANGELIST, {"action": "disable", "_selected_action": [workload.pk]})
    assert status(call(caller, api_key)) == "bypass"
    admin_client.post(CHANGELIST, {"action": "enable", "_selected_action": [workload.pk]})
    assert status(call(caller, api_key)) == "hit"
    actions = list(AuditEntry.objects.order_by("id").values_list("action", "before", "after"))
    assert actions == [
        ("disable", {"enabled": True}, {"enabled": False}),
        ("enable", {"enabled": False}, {"enabled": True}),
    ]


# --- policy edits ------------------------------------------------------------------------------


def _form(workload: Workload, **changes: Any) -> dict[str, Any]:
    data = {
        "enabled": "on" if workload.enabled else "",
        "description": workload.description,
        "ttl_seconds": workload.ttl_seconds,
        "strict": "on" if workload.strict else "",
        "lock_ttl": workload.lock_ttl,
        "wait_max": workload.wait_max,
        "max_upstream_per_minute": workload.max_upstream_per_minute,
        "max_tokens_per_day": workload.max_tokens_per_day,
        "shadow": "on" if workload.shadow else "",
        "drift_threshold_points": workload.drift_threshold_points,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


def test_policy_edit_is_audited_and_reaches_the_next_call(
    admin_client: Client,
    caller: Client,
    workload: Workload,
    api_key: str,
    settings: Any,
    redis_db: Any,
    caplog: Any,
) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "LOCAL_CACHE_SECONDS": 60}
    status(call(caller, api_key, "before"))
    page = html(admin_client.get(reverse("admin:respcache_workload_change", args=[workload.pk])))
    assert "within 60 seconds" in page and "on its very next call" in page
    with caplog.at_level(logging.INFO, logger="respcache.services.governance"):
        response = admin_client.post(
            reverse("admin:respcache_workload_change", args=[workload.pk]),
            _form(workload, ttl_seconds=120, key_version=9, slug="renamed"),
        )
    assert response.status_code == 302, response.content
    workload.refresh_from_db()
    assert (workload.ttl_seconds, workload.key_version, workload.slug) == (120, 1, "intents")
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.before, entry.after) == (
        "edit",
        {"ttl_seconds": 86400},
        {"ttl_seconds": 120},
    )
    assert any("respcache audit: admin edit intents" in r.getMessage() for r in caplog.records)
    # The next call already uses the new TTL, though this process keeps policies for 60 s.
    response = call(caller, api_key, "after")
    assert status(response) == "miss"
    raw = keys.entry_key(
        workload="intents", version=1, fingerprint=response["X-Respcache-Key"], upstream=store.key_space()
    )
    assert 110_000 < redis_db.pttl(store.full_key(raw)) <= 120_000


def test_policy_edit_without_changes_is_not_audited(admin_client: Client, workload: Workload) -> None:
    response = admin_client.post(reverse("admin:respcache_workload_change", args=[workload.pk]), _form(workload))
    assert response.status_code == 302
    assert not AuditEntry.objects.exists()


def test_policy_edit_does_not_undo_a_concurrent_bump(admin_client: Client, workload: Workload) -> None:
    stale_form = _form(workload, ttl_seconds=300)
    services.workload_bump(workload, actor="someone-else")
    admin_client.post(reverse("admin:respcache_workload_change", args=[workload.pk]), stale_form)
    workload.refresh_from_db()
    assert (workload.key_version, workload.ttl_seconds) == (2, 300)


def test_creating_a_workload_in_the_admin_is_audited(admin_client: Client, db: Any) -> None:
    response = admin_client.post(
        reverse("admin:respcache_workload_add"),
        {
            "slug": "new-one",
            "enabled": "on",
            "ttl_seconds": 600,
            "lock_ttl": 60,
            "wait_max": 30,
            "max_upstream_per_minute": 0,
            "max_tokens_per_day": 0,
            "drift_threshold_points": 20,
        },
    )
    assert response.status_code == 302, response.content
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.workload_slug, entry.after["ttl_seconds"]) == (
        "create",
        "new-one",
        600,
    )


def test_invalid_policy_is_a_form_error_not_a_500(admin_client: Client, workload: Workload) -> None:
    response = admin_client.post(
        reverse("admin:respcache_workload_change", args=[workload.pk]),
        _form(workload, ttl_seconds=0),
    )
    assert response.status_code == 200 and "errornote" in response.content.decode()
    workload.refresh_from_db()
    assert workload.ttl_seconds == 86400 and not AuditEntry.objects.exists()


# --- permissions -------------------------------------------------------------------------------


def test_staff_without_bump_or_purge_sees_neither_and_the_server_refuses(
    staff: Any, caller: Client, workload: Workload, api_key: str
) -> None:
    response = call(caller, api_key)
    fingerprint = response["X-Respcache-Key"]
    client = staff("view_workload", "change_workload", "view_entry_content")
    changelist = html(client.get(CHANGELIST))
    assert 'value="disable"' in changelist
    assert "bump_key_version" not in changelist and "purge_entries" not in changelist
    stats_page = html(client.get(url("stats", workload.pk)))
    assert 'id="rc-bump"' not in stats_page and 'id="rc-purge"' not in stats_page
    entry_page = html(client.get(url("entry", workload.pk, 1, fingerprint)))
    assert 'id="rc-delete-entry"' not in entry_page

    client.post(CHANGELIST, {"action": "bump_key_version", "_selected_action": [workload.pk]})
    client.post(CHANGELIST, {"action": "purge_entries", "_selected_action": [workload.pk], "post": "yes"})
    assert client.post(url("bump", workload.pk)).status_code == 403
    assert client.get(url("purge", workload.pk)).status_code == 403
    assert client.post(url("purge", workload.pk)).status_code == 403
    assert client.post(url("entry_delete", workload.pk, 1, fingerprint)).status_code == 403
    workload.refresh_from_db()
    assert workload.key_version == 1 and store.count_entries("intents") == 1
    assert list(AuditEntry.objects.values_list("action", flat=True)) == ["view_entry"]  # the entry page, only


def test_bump_permission_alone_shows_bump_but_not_purge(staff: Any, workload: Workload) -> None:
    client = staff("view_workload", "bump_workload")
    changelist = html(client.get(CHANGELIST))
    assert "bump_key_version" in changelist and "purge_entries" not in changelist
    page = html(client.get(url("stats", workload.pk)))
    assert 'id="rc-bump"' in page and 'id="rc-purge"' not in page
    assert client.post(url("bump", workload.pk)).status_code == 302
    workload.refresh_from_db()
    assert workload.key_version == 2
    assert AuditEntry.objects.get().actor == "operator"


def test_purge_permission_shows_purge(staff: Any, workload: Workload) -> None:
    client = staff("view_workload", "purge_workload")
    assert "purge_entries" in html(client.get(CHANGELIST))
    assert 'id="rc-purge"' in html(client.get(url("stats", workload.pk)))
    assert client.get(url("purge", workload.pk)).status_code == 200


def test_staff_without_view_permission_gets_403(staff: Any, workload: Workload) -> None:
    client = staff("view_auditentry")
    for name in ("stats", "entries"):
        assert client.get(url(name, workload.pk)).status_code == 403


def test_anonymous_is_sent_to_the_login_page(client: Client, workload: Workload) -> None:
    response = client.post(url("bump", workload.pk))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    workload.refresh_from_db()
    assert workload.key_version == 1


# --- the entry browser -------------------------------------------------------------------------


def test_entry_browser_lists_the_current_versions_entries(
    admin_client: Client, caller: Client, workload: Workload, api_key: str
) -> None:
    fingerprints = {call(caller, api_key, t)["X-Respcache-Key"] for t in ("a", "b", "c")}
    status(call(caller, api_key, "a"))  # one read of "a"
    page = html(admin_client.get(url("entries", workload.pk)))
    listed = set(re.findall(r'title="([0-9a-f]{64})"', page))
    assert listed == fingerprints
    assert "3 entries on this page." in page and "End of the list." in page
    assert "claude-test-1" in page
    rows = {r.fingerprint: r for r in store.scan_entries("intents", 1, upstream=store.key_space()).entries}
    assert sorted(r.reads for r in rows.values()) == [0, 0, 1]
    assert all(r.ttl_ms and 86_000_000 < r.ttl_ms <= 86_400_000 and r.size and r.stored_at for r in rows.values())

    services.workload_bump(workload, actor="test")
    assert "No entries." in html(admin_client.get(url("entries", workload.pk)))
    fresh = call(caller, api_key, "a")["X-Respcache-Key"]
    assert set(re.findall(r'title="([0-9a-f]{64})"', html(admin_client.get(url("entries", workload.pk))))) == {fresh}


def test_entry_detail_shows_the_stored_answer_and_delete_removes_it(
    admin_client: Client, caller: Client, workload: Workload, api_key: str, redis_db: Any, fake: Any
) -> None:
    first = call(caller, api_key, "[[shape:tool_use]] weather?")
    fingerprint = first["X-Respcache-Key"]
    page = html(admin_client.get(url("entry", workload.pk, 1, fingerprint)))
    message = orjson.loads(first.content)
    assert message["id"] in page and "get_weather" in page and "Let me look that up." in page
    assert 'id="rc-delete-entry"' in page

    assert admin_client.get(url("entry_delete", workload.pk, 1, fingerprint)).status_code == 405
    response = admin_client.post(url("entry_delete", workload.pk, 1, fingerprint), follow=True)
    assert f"Deleted entry {fingerprint}." in html(response)
    raw = keys.entry_key(workload="intents", version=1, fingerprint=fingerprint, upstream=store.key_space())
    assert redis_db.exists(store.full_key(raw), store.full_key(keys.meta_key(raw))) == 0
    entry = AuditEntry.objects.get(action="delete_entry")
    assert (entry.action, entry.entries_purged, entry.before["fingerprint"]) == (
        "delete_entry",
        1,
        fingerprint,
    )
    assert status(call(caller, api_key, "[[shape:tool_use]] weather?")) == "miss"

    assert admin_client.get(url("entry", workload.pk, 1, "0" * 64)).status_code == 404
    assert admin_client.get(url("entry", workload.pk, 1, "not-a-key")).status_code == 404
    again = admin_client.post(url("entry_delete", workload.pk, 1, "0" * 64), follow=True)
    assert "was already gone" in html(again)


def test_entry_detail_of_an_unreadable_record_says_so(admin_client: Client, workload: Workload, redis_db: Any) -> None:
    raw = keys.entry_key(workload="intents", version=1, fingerprint="a" * 64, upstream=store.key_space())
    redis_db.set(store.full_key(raw), b"RC\x09\x00future schema")
    page = html(admin_client.get(url("entry", workload.pk, 1, "a" * 64)))
    assert "cannot be read by this release" in page


@pytest.mark.parametrize("cursor", ["x'; DROP", "-1", "\u00b2", str(2**64), "9" * 30])
def test_entry_browser_bad_cursor_is_a_message_not_a_500(admin_client: Client, workload: Workload, cursor: str) -> None:
    page = html(admin_client.get(url("entries", workload.pk), {"cursor": cursor}))
    assert "The cursor must be a whole number" in page and "No entries." in page


# Writes ``ARGV[4]`` entries and their meta hashes, fingerprints numbered from ``ARGV[3]``.
_BULK_WRITE = """
local first, n = tonumber(ARGV[3]), tonumber(ARGV[4])
for i = first, first + n - 1 do
  local fingerprint = string.format('%064x', i)
  redis.call('SET', ARGV[1] .. fingerprint, ARGV[5], 'PX', 3600000)
  redis.call('HSET', ARGV[2] .. fingerprint, 'reads', 0, 'in', 1, 'out', 2, 'size', #ARGV[5],
             'model', 'm', 'stored_at', ARGV[6])
end
"""


def _write_entries(redis_db: Any, slug: str, version: int, n: int) -> None:
    """``n`` entries with their meta hashes, as the store writes them, 5,000 per script call (a
    pipeline of 200,000 single commands costs seconds of Python time)."""
    stored_at = time.time()
    record = store.encode_record(b'{"id":"msg_1","content":[]}', stored_at=stored_at, model="m")
    if store.clustered():  # a script touches one slot there: a pipeline, each entry in its own
        pipe = redis_db.pipeline(transaction=False)
        for i in range(n):
            raw = keys.entry_key(workload=slug, version=version, fingerprint=f"{i:064x}", upstream=store.key_space())
            meta = {"reads": 0, "in": 1, "out": 2, "size": len(record), "model": "m", "stored_at": stored_at}
            pipe.set(store.full_key(raw), record, px=3600000)
            pipe.hset(store.full_key(keys.meta_key(raw)), mapping=meta)
        pipe.execute()
        return
    raw = keys.entry_key(workload=slug, version=version, fingerprint="", upstream=store.key_space())
    prefixes = [store.full_key(raw), store.full_key(keys.meta_key(raw))]
    bulk = redis_db.register_script(_BULK_WRITE)
    for first in range(0, n, 5000):
        bulk(keys=[], args=[*prefixes, first, min(5000, n - first), record, stored_at])


def test_entry_browser_stays_bounded_with_100k_entries(admin_client: Client, workload: Workload, redis_db: Any) -> None:
    _write_entries(redis_db, "intents", 1, 100_000)
    _write_entries(redis_db, "intents", 0, 1_000)  # an older version's entries are not listed

    def page(cursor: int) -> tuple[set[str], int, dict[str, int]]:
        before = redis_db.info("commandstats")
        body = html(admin_client.get(url("entries", workload.pk), {"cursor": cursor}))
        after = redis_db.info("commandstats")
        calls = {
            name.removeprefix("cmdstat_"): stat["calls"] - before.get(name, {}).get("calls", 0)
            for name, stat in after.items()
        }
        calls = {k: v for k, v in calls.items() if v}
        match = re.search(r'class="rc-next" href="\?cursor=(\d+)"', body)
        return (
            set(re.findall(r'title="([0-9a-f]{64})"', body)),
            int(match.group(1)) if match else 0,
            calls,
        )

    first, cursor, calls = page(0)
    assert 100 <= len(first) <= 300 and cursor != 0
    assert all(int(fp, 16) < 100_000 for fp in first)
    assert "keys" not in calls and calls["scan"] <= 10
    assert calls["hmget"] == calls["pttl"] == len(first)
    # Nothing else touches Redis per entry: no entry bodies are read (GET is the version key).
    assert calls.get("get", 0) <= 1
    assert sum(calls.values()) <= 10 + 2 * len(first) + 3  # + INFO, version GET, a spare

    second, _, calls = page(cursor)
    assert second and not (second & first) and calls["scan"] <= 10


def test_entry_browser_pages_through_every_entry(admin_client: Client, workload: Workload, redis_db: Any) -> None:
    _write_entries(redis_db, "intents", 1, 450)
    seen: set[str] = set()
    cursor, pages = 0, 0
    while pages < 100:
        body = html(admin_client.get(url("entries", workload.pk), {"cursor": cursor}))
        seen |= set(re.findall(r'title="([0-9a-f]{64})"', body))
        pages += 1
        match = re.search(r'class="rc-next" href="\?cursor=(\d+)"', body)
        if not match:
            break
        cursor = int(match.group(1))
    assert len(seen) == 450 and pages >= 2


# --- the audit trail ---------------------------------------------------------------------------


def test_audit_trail_is_read_only_and_lists_who_did_what(admin_client: Client, workload: Workload) -> None:
    services.workload_bump(workload, actor="alice")
    entry = AuditEntry.objects.get()
    page = html(admin_client.get("/admin/respcache/auditentry/"))
    assert "alice" in page and "key_version: 1 → 2" in page
    assert "/admin/respcache/auditentry/add/" not in page
    assert admin_client.get("/admin/respcache/auditentry/add/").status_code == 403
    change_url = f"/admin/respcache/auditentry/{entry.pk}/change/"
    detail = html(admin_client.get(change_url))
    assert 'name="_save"' not in detail
    assert admin_client.post(change_url, {"actor": "mallory"}).status_code == 403
    assert admin_client.post(f"/admin/respcache/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.get().actor == "alice"


def test_audit_trail_link_of_a_workload_lists_only_its_records(admin_client: Client, make_workload: Any) -> None:
    intents, other = make_workload("intents"), make_workload("other")
    services.workload_bump(intents, actor="alice")
    services.workload_bump(other, actor="bob")
    stats_page = html(admin_client.get(url("stats", intents.pk)))
    link = re.search(r'href="(/admin/respcache/auditentry/\?[^"]+)"', stats_page)
    assert link is not None
    page = html(admin_client.get(link.group(1).replace("&amp;", "&")))
    assert "alice" in page and "bob" not in page


# --- API keys ----------------------------------------------------------------------------------


def test_api_key_create_shows_the_key_once_and_it_works(
    admin_client: Client, caller: Client, workload: Workload
) -> None:
    response = admin_client.post(
        "/admin/respcache/apikey/add/", {"name": "router", "workloads": [workload.pk]}, follow=True
    )
    page = html(response)
    found = re.search(r"The API key for router is: ([\w.]+)\.", page)
    assert found is not None
    key = found.group(1)
    assert status(call(caller, key)) == "miss"
    api_key = ApiKey.objects.get(name="router")
    assert key not in html(admin_client.get("/admin/respcache/apikey/"))
    assert key not in html(admin_client.get(f"/admin/respcache/apikey/{api_key.pk}/change/"))
    assert api_key.hashed_key and key not in api_key.hashed_key


def test_api_key_list_shows_name_prefix_workloads_created_last_used_revoked(
    admin_client: Client, caller: Client, make_workload: Any, make_key: Any
) -> None:
    a, b = make_workload("alpha"), make_workload("beta")
    make_key(a, b, name="two-workloads")
    used = make_key(a, name="used-one")
    status(call(caller, used, slug="alpha"))
    page = html(admin_client.get("/admin/respcache/apikey/"))
    for header in ("Name", "Prefix", "Workloads", "Created", "Last used", "Revoked"):
        assert f">{header}<" in page or f">{header}</a>" in page, header
    assert "alpha, beta" in page
    for key in ApiKey.objects.all():
        assert key.prefix in page
    assert ApiKey.objects.get(name="used-one").last_used_at is not None
    assert ApiKey.objects.get(name="two-workloads").last_used_at is None


def test_revoke_action_refuses_the_key_at_once(
    admin_client: Client, caller: Client, workload: Workload, api_key: str, settings: Any
) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "LOCAL_CACHE_SECONDS": 60}
    assert status(call(caller, api_key)) == "miss"  # the grant is now kept in this process
    pk = ApiKey.objects.get().pk
    response = admin_client.post(
        "/admin/respcache/apikey/", {"action": "revoke", "_selected_action": [pk]}, follow=True
    )
    assert "Revoked 1 API key. Callers using it are refused within 60 s." in html(response)
    refused = call(caller, api_key)
    assert refused.status_code == 401 and orjson.loads(refused.content)["error"]["type"] == "authentication_error"


def test_revoking_in_the_change_form_refuses_the_key_at_once(
    admin_client: Client, caller: Client, workload: Workload, api_key: str, settings: Any
) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "LOCAL_CACHE_SECONDS": 60}
    assert status(call(caller, api_key)) == "miss"
    api = ApiKey.objects.get()
    response = admin_client.post(
        f"/admin/respcache/apikey/{api.pk}/change/",
        {"name": api.name, "workloads": [workload.pk], "revoked": "on"},
    )
    assert response.status_code == 302, response.content
    assert call(caller, api_key).status_code == 401


def test_only_respcaches_api_keys_are_in_the_admin(admin_client: Client) -> None:
    page = html(admin_client.get("/admin/"))
    assert "/admin/respcache/apikey/" in page
    assert "/admin/rest_framework_api_key/" not in page
