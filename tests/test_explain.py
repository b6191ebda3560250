"""The miss explainer and entry summaries, through HTTP, the SDK, the management API and the
admin, against the real Redis and database (the fake Messages API or the simulated upstream)."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from respcache import keys, services, stats, store
from respcache.models import Workload
from respcache.services import explain
from respcache.store import IndexItem
from tests.conftest import ask, redis_down

pytestmark = pytest.mark.django_db


def post(client: Client, key: str, body: dict[str, Any], *, slug: str = "intents", explained: bool = True) -> Any:
    headers = {"HTTP_RESPCACHE_EXPLAIN": "1"} if explained else {}
    return client.post(
        f"/w/{slug}/v1/messages",
        data=orjson.dumps(body),
        content_type="application/json",
        HTTP_X_API_KEY=key,
        **headers,
    )


def miss_header(response: Any) -> str | None:
    assert response.status_code == 200, response.content
    return response.get("X-Respcache-Miss")


TOOL = {"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}
CHAT = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "what is the time?"},
]


# --- the pure parts ----------------------------------------------------------------------------


def test_field_fingerprints_follow_the_key_normalisation() -> None:
    a = keys.field_fingerprints(ask("x", system="be brief", stream=True))
    b = keys.field_fingerprints(ask("", system=[{"type": "text", "text": "be brief"}]) | {})
    assert set(a) == {"model", "max_tokens", "system", "messages[0]"}  # stream is not in the key
    assert a["system"] == b["system"] and a["messages[0]"] != b["messages[0]"]
    blocks = ask("x")
    blocks["messages"][0]["content"] = [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]
    assert keys.field_fingerprints(blocks) == keys.field_fingerprints(ask("x"))
    assert keys.field_fingerprints(ask("x", max_tokens=64.0)) == keys.field_fingerprints(ask("x"))
    assert "anthropic-beta" in keys.field_fingerprints(ask("x"), beta="b1")
    assert all(len(v) == 16 for v in a.values())


def test_the_shape_is_the_endpoint_and_the_message_roles() -> None:
    assert keys.request_shape(ask("a")) == keys.request_shape(ask("b", model="other", system="s"))
    assert keys.request_shape(ask("a")) != keys.request_shape(ask("a", messages=CHAT))
    assert keys.request_shape(ask("a")) != keys.request_shape(ask("a"), endpoint=keys.COUNT_TOKENS)


def item(body: dict[str, Any], at: float = 100.0, key: str = "f" * 16) -> IndexItem:
    return IndexItem(fingerprint=key, stored_at=at, fields=keys.field_fingerprints(body))


def test_explain_names_the_fields_of_the_closest_live_request() -> None:
    request = keys.field_fingerprints(ask("a", system="s2", max_tokens=10))
    far = item(ask("b", system="s3", max_tokens=11))
    close = item(ask("a", system="s1", max_tokens=10))
    found = explain.explain(request, [far, close], fingerprint="0" * 64, live_after=0)
    assert (found.header, found.reason) == ("differs=system", "system")
    expired = explain.explain(
        request, [far, item(ask("a", system="s1", max_tokens=10), at=5)], fingerprint="0", live_after=50
    )
    assert expired.differs == ("max_tokens", "messages[0]", "system")
    assert expired.reason == "system"  # configuration first, then other fields, then messages
    own = explain.explain(request, [close], fingerprint="f" * 64, live_after=0)
    assert own.header == "new"  # the request's own entry (just stored by another caller) is no candidate
    nothing_equal = item(
        {"model": "m2", "max_tokens": 1, "messages": [{"role": "user", "content": "z"}], "system": "q"}
    )
    assert explain.explain(request, [nothing_equal], fingerprint="0", live_after=0).header == "new"
    assert explain.explain(request, [], fingerprint="0", live_after=0).reason == "new"
    assert explain.Explanation(("temperature", "messages[3]")).reason == "other"
    assert explain.Explanation(("messages[10]", "messages[2]")).reason == "messages"


def test_summaries_keep_the_start_of_each_part() -> None:
    body = ask(
        "q " * 500,
        system=[{"type": "text", "text": "S" * 300}],
        messages=[*CHAT[:2], {"role": "user", "content": "last?"}],
    )
    answer = orjson.dumps({"content": [{"type": "text", "text": "\n\nFirst line.\nSecond."}]})
    summary = explain.summarise(body, answer)
    assert summary == {"system": "S" * 199 + "…", "user": "last?", "answer": "First line."}
    long = explain.summarise(ask("word " * 500), orjson.dumps({"content": [{"type": "tool_use", "name": "f"}]}))
    assert len(long["user"]) == explain.SUMMARY_CHARS and long["answer"] == "[tool_use f]" and long["system"] == ""
    assert store.decode_summary(store.encode_summary(summary)) == summary
    assert store.decode_summary(b"not json") is None and store.decode_fields(b"[1]") is None


# --- the header, through HTTP and the SDK ------------------------------------------------------


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        ({"system": "be terse"}, "differs=system"),
        ({"model": "claude-test-2"}, "differs=model"),
        ({"max_tokens": 65}, "differs=max_tokens"),
        ({"tools": [TOOL]}, "differs=tools"),
        ({"messages": [*CHAT[:2], {"role": "user", "content": "what is the date?"}]}, "differs=messages[2]"),
        ({"messages": [{"role": "user", "content": "a new question"}, *CHAT[1:]]}, "differs=messages[0]"),
    ],
)
def test_a_miss_names_what_the_closest_stored_request_differs_in(
    client: Client, workload: Workload, api_key: str, changed: dict[str, Any], expected: str
) -> None:
    stored = ask("x", system="be brief", messages=CHAT)
    assert miss_header(post(client, api_key, stored)) == "new"
    assert miss_header(post(client, api_key, stored)) is None  # a hit: nothing to explain
    assert miss_header(post(client, api_key, stored | changed)) == expected


def test_new_when_no_stored_request_shares_the_shape(client: Client, workload: Workload, api_key: str) -> None:
    assert miss_header(post(client, api_key, ask("one"))) == "new"
    assert miss_header(post(client, api_key, ask("two", messages=CHAT))) == "new"  # 3 messages: another shape
    assert miss_header(post(client, api_key, ask("two"))) == "differs=messages[0]"
    services.workload_bump(workload, actor="test")  # another key version: nothing to compare with
    assert miss_header(post(client, api_key, ask("three"))) == "new"


def test_the_header_only_for_callers_who_ask(client: Client, workload: Workload, api_key: str) -> None:
    response = post(client, api_key, ask("one"), explained=False)
    assert response["X-Respcache"] == "miss" and miss_header(response) is None


def test_sdk_callers_read_the_header(sdk: Any, workload: Workload, fake: Any) -> None:
    client = sdk()
    explain_header = {"Respcache-Explain": "1"}
    first = client.messages.with_raw_response.create(**ask("hello"), extra_headers=explain_header)
    assert first.headers["X-Respcache-Miss"] == "new"
    again = client.messages.with_raw_response.create(**ask("hello", max_tokens=10), extra_headers=explain_header)
    assert again.headers["X-Respcache"] == "miss" and again.headers["X-Respcache-Miss"] == "differs=max_tokens"
    hit = client.messages.with_raw_response.create(**ask("hello"), extra_headers=explain_header)
    assert hit.headers["X-Respcache"] == "hit" and "X-Respcache-Miss" not in hit.headers


def test_a_streamed_miss_is_explained_too(sdk: Any, workload: Workload, fake: Any) -> None:
    client = sdk()
    client.messages.create(**ask("hello"))
    with client.messages.with_streaming_response.create(
        **ask("hello", system="new prompt"), stream=True, extra_headers={"Respcache-Explain": "1"}
    ) as response:
        assert response.headers["X-Respcache-Miss"] == "differs=system"
        response.read()


def test_with_redis_gone_at_the_explainer_the_miss_is_answered_unexplained(
    sdk: Any, workload: Workload, fake: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The explainer's read fails open (guard.EXPLAIN): Redis stops answering after the lookup
    and the lock, just as the explainer reads the shape index (its connection goes to a port
    where nothing listens). The caller still gets its answer, once from the upstream, with no
    X-Respcache-Miss header, and nothing counted as why it missed, nor as a cache error: the
    answer itself was still stored."""
    client = sdk()
    explain_header = {"Respcache-Explain": "1"}
    client.messages.create(**ask("hello"))
    live = settings.CACHES
    read = store.recent_requests
    reads: list[str] = []

    def gone(*args: Any, **kwargs: Any) -> list[IndexItem]:
        settings.CACHES = redis_down(live)  # a real connection, refused
        try:
            reads.append("tried")
            return read(*args, **kwargs)
        finally:
            settings.CACHES = live

    monkeypatch.setattr(store, "recent_requests", gone)
    calls_before = len(fake.message_calls())
    missed = client.messages.with_raw_response.create(**ask("hello", max_tokens=10), extra_headers=explain_header)
    assert reads == ["tried"]
    assert missed.headers["X-Respcache"] == "miss" and "X-Respcache-Miss" not in missed.headers
    assert missed.parse().content, "the caller got its answer"
    assert len(fake.message_calls()) == calls_before + 1
    totals = stats.totals("intents", "5m")
    assert totals["miss"] == 2 and totals["cache_error"] == 0
    assert sum(totals.miss_reasons().values()) == 1  # the first miss only ("new")
    monkeypatch.undo()
    again = client.messages.with_raw_response.create(**ask("hello", max_tokens=10), extra_headers=explain_header)
    assert again.headers["X-Respcache"] == "hit"  # the unexplained miss was stored
    assert len(fake.message_calls()) == calls_before + 1


# --- counts and the endpoint -------------------------------------------------------------------


def test_every_miss_is_counted_under_its_reason_and_the_endpoint_returns_them(
    client: Client, workload: Workload, api_key: str
) -> None:
    post(client, api_key, ask("a"), explained=False)  # new
    post(client, api_key, ask("a", system="s"), explained=False)  # system
    post(client, api_key, ask("a", max_tokens=9), explained=False)  # max_tokens
    post(client, api_key, ask("b"))  # messages[0]
    post(client, api_key, ask("a", temperature=0))  # other
    post(client, api_key, ask("a"))  # a hit: not a miss
    User.objects.create_user("ops", is_staff=True, is_superuser=True)
    api = APIClient()
    api.force_login(User.objects.get(username="ops"))
    response = api.get("/api/workloads/intents/misses/", {"window": "1h"})
    assert response.status_code == 200, response.content
    assert response.json() == {
        "workload": "intents",
        "key_version": 1,
        "window": "1h",
        "misses": 5,
        "explained": 5,
        "reasons": {"new": 1, "model": 0, "system": 1, "tools": 0, "max_tokens": 1, "other": 1, "messages": 1},
    }
    bad = api.get("/api/workloads/intents/misses/", {"window": "2h"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert api.get("/api/workloads/nope/misses/").status_code == 404
    assert APIClient().get("/api/workloads/intents/misses/").status_code in (401, 403)


def test_the_misses_endpoint_is_in_the_openapi_schema(client: Client, db: Any) -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operation = schema["paths"]["/api/workloads/{slug}/misses/"]["get"]
    assert operation["operationId"] == "workloads_misses"
    assert {p["name"] for p in operation["parameters"]} >= {"slug", "window"}
    reasons = schema["components"]["schemas"]["MissReasons"]["properties"]
    assert set(reasons) == set(explain.REASONS)
    messages = schema["paths"]["/w/{workload}/v1/messages"]["post"]
    assert "Respcache-Explain" in {p["name"] for p in messages["parameters"]}


# --- what each entry keeps, and the entry browser ------------------------------------------------


def notes_of(redis_db: Any, fingerprint: str) -> tuple[bytes, bytes]:
    raw = keys.entry_key(workload="intents", version=1, fingerprint=fingerprint, upstream=store.key_space())
    return store.decode_notes(redis_db.get(store.full_key(keys.notes_key(raw))))


def test_each_entry_keeps_its_fields_and_a_capped_summary_with_its_ttl(
    client: Client, workload: Workload, api_key: str, redis_db: Any
) -> None:
    body = ask("U" * 1000, system="S" * 1000)
    fingerprint = post(client, api_key, body)["X-Respcache-Key"]
    fields, encoded_summary = notes_of(redis_db, fingerprint)
    summary = store.decode_summary(encoded_summary)
    assert summary is not None and summary["system"] == "S" * 199 + "…" and summary["user"] == "U" * 199 + "…"
    assert summary["answer"]
    assert store.decode_fields(fields) == keys.field_fingerprints(body)
    raw = keys.entry_key(workload="intents", version=1, fingerprint=fingerprint, upstream=store.key_space())
    entry_ttl = redis_db.pttl(store.full_key(raw))
    assert abs(redis_db.pttl(store.full_key(keys.notes_key(raw))) - entry_ttl) < 5000
    meta = redis_db.hgetall(store.full_key(keys.meta_key(raw)))
    assert b"summary" not in meta and redis_db.object("encoding", store.full_key(keys.meta_key(raw))) in (
        b"listpack",
        b"ziplist",
    )
    index = store.shape_index("intents", 1, keys.request_shape(body), store.key_space())
    assert redis_db.llen(index) == 1 and abs(redis_db.pttl(index) - entry_ttl) < 5000
    for n in range(explain.INDEX_KEEP + 5):
        post(client, api_key, ask(f"question {n}"), explained=False)
    assert redis_db.llen(index) == explain.INDEX_KEEP  # bounded
    services.entry_delete(workload, version=1, fingerprint=fingerprint, actor="test")
    assert redis_db.exists(store.full_key(keys.notes_key(raw))) == 0
    services.workload_purge(workload, actor="test")
    assert redis_db.exists(index) == 0 and not list(redis_db.scan_iter("*respcache:n:*"))


def entries_page(admin_client: Client, workload: Workload, **params: Any) -> str:
    response = admin_client.get(reverse("admin:respcache_workload_entries", args=[workload.pk]), params)
    assert response.status_code == 200
    return str(response.content.decode())


def test_the_entry_browser_lists_summaries_hottest_first_and_filters_by_text(
    admin_client: Client, client: Client, workload: Workload, api_key: str
) -> None:
    keys_by_text = {}
    for text, reads in (("cold question", 0), ("hot question", 3), ("warm <b>question</b>", 1)):
        keys_by_text[text] = post(client, api_key, ask(text, system="Answer politely."))["X-Respcache-Key"]
        for _ in range(reads):
            post(client, api_key, ask(text, system="Answer politely."))
    page = entries_page(admin_client, workload)
    listed = re.findall(r'title="([0-9a-f]{64})"', page)
    assert listed == [keys_by_text["hot question"], keys_by_text["warm <b>question</b>"], keys_by_text["cold question"]]
    assert "Answer politely." in page and "hot question" in page
    assert "warm &lt;b&gt;question&lt;/b&gt;" in page and "<b>question</b>" not in page  # autoescaped
    filtered = entries_page(admin_client, workload, q="WARM")
    assert re.findall(r'title="([0-9a-f]{64})"', filtered) == [keys_by_text["warm <b>question</b>"]]
    assert "No entries whose summary holds this text." in entries_page(admin_client, workload, q="nowhere")
    scan = entries_page(admin_client, workload, cursor=0, q="hot")
    assert re.findall(r'title="([0-9a-f]{64})"', scan) == [keys_by_text["hot question"]]


def test_the_hottest_first_list_pages_and_stays_bounded(
    admin_client: Client, workload: Workload, redis_db: Any
) -> None:
    from tests.test_admin import _write_entries

    _write_entries(redis_db, "intents", 1, 250)
    first = entries_page(admin_client, workload)
    second = entries_page(admin_client, workload, page=2)
    third = entries_page(admin_client, workload, page=3)
    pages = [set(re.findall(r'title="([0-9a-f]{64})"', p)) for p in (first, second, third)]
    assert [len(p) for p in pages] == [100, 100, 50] and len(set.union(*pages)) == 250
    assert "End of the list." in third and 'class="rc-next-page"' in first
    found = store.hot_entries("intents", 1, upstream=store.key_space(), max_entries=120)
    assert not found.complete and 120 <= found.scanned < 250


def test_an_entry_page_shows_its_request_summary_and_the_whole_answer(
    admin_client: Client, client: Client, workload: Workload, api_key: str
) -> None:
    response = post(client, api_key, ask("tell me everything", system="You are a librarian."))
    message = orjson.loads(response.content)
    page = admin_client.get(
        reverse("admin:respcache_workload_entry", args=[workload.pk, 1, response["X-Respcache-Key"]])
    ).content.decode()
    summary = page[page.index('id="rc-entry-summary"') :]
    assert "You are a librarian." in summary and "tell me everything" in summary
    for block in message["content"]:
        if block.get("type") == "text":
            assert block["text"] in page
    assert message["id"] in page
