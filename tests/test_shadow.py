"""Shadow mode through HTTP and the SDK, the command and the counters, against real Redis: every
call asks the upstream (the fake counts them) and is labelled ``shadow``; the fresh answer is
stored; would-be hits, the tokens they would have saved and the agreement of the answers are
counted and reach ``respcache_stats --json`` and ``/metrics``."""

from __future__ import annotations

import json
import re
from io import StringIO
from typing import Any

import orjson
import pytest
from django.core.management import call_command
from django.test import Client

from respcache import selectors, services, stats, store, tally
from respcache.models import AuditEntry, Workload
from tests.api.test_views import create
from tests.conftest import ask

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def stats_json(slug: str = "intents", window: str = "1h") -> dict[str, Any]:
    (row,) = json.loads(run("respcache_stats", slug, "--window", window, "--json"))
    return dict(row)


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(2))
    return None


def test_the_command_turns_shadow_on_and_off_audited(workload: Workload) -> None:
    out = run("respcache_workload", "intents", "--shadow", "--drift-threshold", "35")
    assert "shadow=True drift_threshold=35" in out
    workload.refresh_from_db()
    assert workload.shadow and workload.drift_threshold_points == 35
    edit = AuditEntry.objects.get(action="edit")
    assert edit.before == {"drift_threshold_points": 20, "shadow": False}
    assert edit.after == {"drift_threshold_points": 35, "shadow": True}
    assert "shadow=False" in run("respcache_workload", "intents", "--no-shadow")
    workload.refresh_from_db()
    assert not workload.shadow


@pytest.mark.parametrize("points", ["0", "101"])
def test_a_drift_threshold_out_of_range_is_refused(workload: Workload, points: str) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="drift_threshold_points"):
        run("respcache_workload", "intents", "--drift-threshold", points)


def test_shadow_calls_are_fresh_labelled_stored_and_counted(workload: Workload, sdk: Any, fake: Any) -> None:
    client = sdk()
    assert create(client, ask("reset")).headers["x-respcache"] == "miss"  # a normal cache first
    assert create(client, ask("reset")).headers["x-respcache"] == "hit"
    services.workload_upsert(slug="intents", shadow=True, actor="test")
    fake.reset()

    labels = [create(client, ask("reset")).headers["x-respcache"] for _ in range(3)]
    labels.append(create(client, ask("brand new")).headers["x-respcache"])
    assert labels == ["shadow"] * 4
    assert len(fake.message_calls()) == 4  # the upstream answered every one

    row = stats_json()
    assert row["shadow"] == 4 and row["would_hit"] == 3 and row["agree"] == 3
    assert row["agreement"] == 1.0
    assert row["hit"] == 1 and row["miss"] == 1  # shadow calls are neither hits nor misses
    assert row["hit_rate"] == 0.5
    usage = create(client, ask("reset")).parse().usage
    assert row["would_save_in"] == 3 * usage.input_tokens and row["would_save_out"] == 3 * usage.output_tokens
    assert row["written"] == 1 + 4  # the miss, then every shadow call stored its fresh answer

    # Back to normal: the entry the shadow calls stored is served.
    services.workload_upsert(slug="intents", shadow=False, actor="test")
    fake.reset()
    assert create(client, ask("brand new")).headers["x-respcache"] == "hit"
    assert fake.message_calls() == []


def test_a_changed_answer_lowers_the_agreement_and_replaces_the_entry(workload: Workload, sdk: Any, fake: Any) -> None:
    services.workload_upsert(slug="intents", shadow=True, actor="test")
    client = sdk()
    first = create(client, ask("reset")).parse()  # nothing stored yet: not a would-be hit
    assert create(client, ask("reset")).parse().content == first.content  # agrees
    fake.salt = "the model changed"
    changed = create(client, ask("reset")).parse()
    assert changed.content != first.content  # the caller got the fresh answer
    assert create(client, ask("reset")).parse().content == changed.content  # agrees with the new entry
    row = stats_json()
    assert (row["shadow"], row["would_hit"], row["agree"]) == (4, 3, 2)
    assert row["agreement"] == pytest.approx(2 / 3)
    # The stored entry is the last fresh answer.
    policy = selectors.workload_policy("intents")
    assert policy is not None and policy.shadow
    services.workload_upsert(slug="intents", shadow=False, actor="test")
    hit = create(client, ask("reset"))
    assert hit.headers["x-respcache"] == "hit" and hit.parse().content == changed.content


def test_stop_reason_alone_decides_disagreement_too(workload: Workload, sdk: Any, fake: Any) -> None:
    """The content and the stop reason are compared, parsed, not the bytes (ids differ)."""
    from respcache.services.calls import Call

    same = {"content": [{"type": "text", "text": "a"}], "stop_reason": "end_turn", "id": "msg_1"}
    assert Call.same_answer(same, {**same, "id": "msg_2", "usage": {"input_tokens": 9}})
    assert not Call.same_answer(same, {**same, "stop_reason": "max_tokens"})
    assert not Call.same_answer(same, {**same, "content": [{"type": "text", "text": "b"}]})


def test_no_cache_would_not_have_hit_and_no_store_stores_nothing(workload: Workload, sdk: Any, fake: Any) -> None:
    services.workload_upsert(slug="intents", shadow=True, actor="test")
    client = sdk()
    create(client, ask("reset"))
    refreshed = create(client, ask("reset"), extra_headers={"cache-control": "no-cache"})
    assert refreshed.headers["x-respcache"] == "shadow"
    unstored = create(client, ask("other"), extra_headers={"cache-control": "no-store"})
    assert unstored.headers["x-respcache"] == "shadow"
    row = stats_json()
    assert (row["shadow"], row["would_hit"], row["written"]) == (3, 0, 2)
    assert len(fake.message_calls()) == 3


def test_a_shadow_stream_is_fresh_stored_and_compared(workload: Workload, sdk: Any, fake: Any) -> None:
    services.workload_upsert(slug="intents", shadow=True, actor="test")
    client = sdk()
    create(client, ask("reset"))
    for _ in range(2):
        with client.messages.with_streaming_response.create(**ask("reset"), stream=True) as response:
            assert response.headers["x-respcache"] == "shadow"
            assert b"message_stop" in b"".join(response.iter_bytes())
    assert len(fake.message_calls()) == 3
    row = stats_json()
    assert (row["shadow"], row["would_hit"], row["agree"], row["written"]) == (3, 2, 2, 3)


def test_count_tokens_in_shadow_mode_compare_the_whole_count(workload: Workload, sdk: Any, fake: Any) -> None:
    services.workload_upsert(slug="intents", shadow=True, actor="test")
    client = sdk()
    for _ in range(2):
        raw = client.messages.with_raw_response.count_tokens(model="claude-test-1", messages=ask()["messages"])
        assert raw.headers["x-respcache"] == "shadow"
    row = stats_json()
    assert (row["would_hit"], row["agree"], row["would_save_in"]) == (1, 1, 0)


def test_shadow_numbers_in_metrics(workload: Workload, sdk: Any, fake: Any) -> None:
    services.workload_upsert(slug="intents", shadow=True, actor="test")
    client = sdk()
    for _ in range(3):
        create(client, ask("reset"))
    fake.salt = "changed"
    create(client, ask("reset"))
    text = Client().get("/metrics").content.decode()
    assert metric(text, "respcache_requests_total", workload="intents", outcome="shadow") == 4
    assert metric(text, "respcache_shadow_would_hit_total", workload="intents") == 3
    assert metric(text, "respcache_shadow_agree_total", workload="intents") == 2
    assert metric(text, "respcache_shadow_agreement", workload="intents", window="1h") == pytest.approx(2 / 3)
    saved = metric(text, "respcache_shadow_would_save_tokens_total", workload="intents", kind="output")
    assert saved is not None and saved > 0
    assert metric(text, "respcache_workload_shadow", workload="intents") == 1
    assert metric(text, "respcache_hit_rate", workload="intents") is None  # no lookups at all


def test_shadow_when_redis_is_down_still_answers_fresh(workload: Workload, sdk: Any, fake: Any, settings: Any) -> None:
    from tests.conftest import redis_down

    services.workload_upsert(slug="intents", shadow=True, actor="test")
    policy = selectors.workload_policy("intents")
    assert policy is not None
    settings.CACHES = redis_down(settings.CACHES)
    body = ask("reset")
    result = services.cached_message_create(policy=policy, body=body, raw_body=orjson.dumps(body))
    assert result.status == "shadow" and len(fake.message_calls()) == 1


def test_would_hit_counts_reach_the_buckets_and_totals(workload: Workload, sdk: Any, fake: Any, redis_db: Any) -> None:
    services.workload_upsert(slug="intents", shadow=True, actor="test")
    client = sdk()
    create(client, ask("reset"))
    create(client, ask("reset"))
    tally.flush()
    totals = redis_db.hgetall(store.totals_key("intents"))
    assert int(totals[b"would_hit"]) == 1 and int(totals[b"shadow"]) == 2
    assert stats.totals("intents", "5m")["would_hit"] == 1


def test_the_admin_form_turns_shadow_on_audited_and_the_next_call_is_shadow(
    admin_client: Any, workload: Workload, sdk: Any, fake: Any
) -> None:
    from django.urls import reverse

    from tests.test_admin import _form

    url = reverse("admin:respcache_workload_change", args=[workload.pk])
    assert 'name="shadow"' in admin_client.get(url).content.decode()
    response = admin_client.post(url, _form(workload, shadow="on", drift_threshold_points=40))
    assert response.status_code == 302, response.content
    entry = AuditEntry.objects.get(action="edit")
    assert entry.after == {"drift_threshold_points": 40, "shadow": True}
    assert entry.actor == "admin"
    assert create(sdk(), ask("reset")).headers["x-respcache"] == "shadow"
    bad = admin_client.post(url, _form(workload, drift_threshold_points=0))
    assert bad.status_code == 200 and "drift_threshold_points" in bad.content.decode()
