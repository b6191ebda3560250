"""cached_message_stream() without HTTP in front: what closing, breaking or garbling a stream does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from respcache import keys, locks, selectors, sse, stats, store
from respcache.exceptions import UpstreamUnavailable
from respcache.services import cached_message_create, cached_message_stream
from respcache.services.calls import MISS
from respcache.services.stampede import Names
from respcache.upstream import SimulatedUpstream, UpstreamResponse, UpstreamStream, get_upstream
from tests.conftest import ask, redis_down
from tests.fake_anthropic import make_message

pytestmark = pytest.mark.django_db


class ScriptedUpstream:
    """An upstream whose stream is the given chunks, then (optionally) a broken connection."""

    def __init__(self, chunks: list[bytes], *, then: Exception | None = None) -> None:
        self.chunks = chunks
        self.then = then
        self.closed = 0

    def _iterate(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.then is not None:
            raise self.then

    def stream(self, raw_body: bytes, body: dict[str, Any], *, headers: dict[str, str]) -> UpstreamStream:
        return UpstreamStream(self._iterate(), close=self._close)

    def _close(self) -> None:
        self.closed += 1

    def create(self, raw_body: bytes, body: dict[str, Any], *, headers: dict[str, str]) -> UpstreamResponse:
        raise AssertionError("not called")

    def count_tokens(self, raw_body: bytes, body: dict[str, Any], *, headers: dict[str, str]) -> UpstreamResponse:
        raise AssertionError("not called")


def names_for(body: dict[str, Any]) -> Names:
    return Names.build("intents", 1, keys.request_fingerprint(body))


def events_of(message: dict[str, Any]) -> list[bytes]:
    return [sse.encode(name, data) for name, data in sse.message_events(message)]


def stream(body: dict[str, Any], upstream: Any = None) -> Any:
    policy = selectors.workload_policy("intents")
    assert policy is not None
    return cached_message_stream(policy=policy, body=body, raw_body=orjson.dumps(body), upstream=upstream)


@pytest.mark.parametrize("after", [0, 1, 3])
def test_closing_the_stream_early_stores_nothing_and_tells_the_waiters_abandoned(
    workload: Any, redis_db: Any, after: int
) -> None:
    body = ask("walk away", stream=True)
    upstream = ScriptedUpstream(events_of(make_message(body)))
    names = names_for(body)
    with locks.Subscription(names.channel) as waiter:
        result = stream(body, upstream)
        assert result.status == MISS
        assert redis_db.exists(names.lock)
        for _ in range(after):
            next(result.stream)
        result.stream.close()  # what the WSGI server does when the caller goes away
        assert waiter.wait(time.monotonic() + 5) == b"abandoned"
    assert not redis_db.exists(names.lock)
    assert not redis_db.exists(names.entry)
    assert upstream.closed == 1
    assert list(result.stream) == []
    totals = stats.totals("intents", "5m")
    assert (totals["miss"], totals["upstream_calls"], totals["upstream_error"]) == (1, 1, 0)


def test_a_connection_broken_mid_stream_ends_with_an_error_event_and_the_waiters_get_it(
    workload: Any, redis_db: Any
) -> None:
    body = ask("broken", stream=True)
    chunks = events_of(make_message(body))[:3]
    upstream = ScriptedUpstream(chunks, then=UpstreamUnavailable("upstream stream broke: reset"))
    names = names_for(body)
    with locks.Subscription(names.channel) as waiter:
        sent = list(stream(body, upstream).stream)
        told = waiter.wait(time.monotonic() + 5)
    assert sent[:3] == chunks
    assert sent[3:] == [sse.error_event("api_error", "upstream stream broke: reset")]
    assert told is not None and told.startswith(b"error:")
    assert orjson.loads(told[len(b"error:") :])["status"] == 502
    assert not redis_db.exists(names.entry) and not redis_db.exists(names.lock)
    assert stats.totals("intents", "5m")["upstream_error"] == 1


def test_a_stream_it_cannot_rebuild_is_passed_on_but_never_stored(workload: Any, redis_db: Any) -> None:
    body = ask("future", stream=True)
    chunks = events_of(make_message(body))
    odd = sse.encode("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "new_delta"}})
    chunks.insert(3, odd)
    names = names_for(body)
    with locks.Subscription(names.channel) as waiter:
        sent = list(stream(body, ScriptedUpstream(chunks)).stream)
        assert waiter.wait(time.monotonic() + 5) == b"abandoned"
    assert sent == chunks
    assert not redis_db.exists(names.entry) and not redis_db.exists(names.lock)


def test_a_complete_stream_is_stored_before_its_last_event_is_passed_on(workload: Any, redis_db: Any) -> None:
    body = ask("in order", stream=True)
    message = make_message(body, "tool_use")
    chunks = events_of(message)
    names = names_for(body)
    result = stream(body, ScriptedUpstream(chunks))
    for chunk in chunks[:-1]:
        assert next(result.stream) == chunk
    assert not redis_db.exists(names.entry)
    assert next(result.stream) == chunks[-1]  # message_stop
    assert redis_db.exists(names.entry) and not redis_db.exists(names.lock)
    assert list(result.stream) == []
    policy = selectors.workload_policy("intents")
    assert policy is not None
    hit = cached_message_create(policy=policy, body=body, raw_body=b"{}", upstream=ScriptedUpstream([]))
    assert hit.status == "hit"
    assert orjson.loads(hit.body) == message


def test_the_real_upstream_client_streams_the_fake(fake: Any, workload: Any) -> None:
    body = ask("[[shape:thinking]] through the SDK", stream=True)
    opened = get_upstream().stream(orjson.dumps(body), body, headers={})
    assembler = sse.MessageAssembler()
    parser = sse.EventParser()
    for chunk in opened:
        for event, data in parser.feed(chunk):
            assembler.feed(event, data)
    opened.close()
    assert assembler.complete
    assert assembler.result() == make_message(body, "thinking")


def test_simulated_upstream_streams_what_it_creates(workload: Any) -> None:
    body = ask("simulated", stream=True)
    raw = orjson.dumps(body)
    upstream = SimulatedUpstream()
    assembler = sse.MessageAssembler()
    for chunk in upstream.stream(raw, body, headers={}):
        for event, data in sse.EventParser().feed(chunk):
            assembler.feed(event, data)
    assert assembler.complete
    assert assembler.result() == upstream.create(raw, body, headers={}).message
    count = upstream.count_tokens(raw, body, headers={})
    assert count.message["input_tokens"] > 0


def test_an_unreadable_record_is_a_miss_for_a_stream_too(workload: Any, redis_db: Any) -> None:
    body = ask("damaged", stream=True)
    names = names_for(body)
    redis_db.set(names.entry, b"RC\x63\x00garbage")
    result = stream(body, ScriptedUpstream(events_of(make_message(body))))
    assert result.status == MISS
    assert b"".join(result.stream).endswith(sse.encode("message_stop", {"type": "message_stop"}))
    assert store.decode_record(redis_db.get(names.entry)) is not None


def test_redis_down_a_stream_fails_open_from_the_upstream(fake: Any, workload: Any, settings: Any) -> None:
    live_caches = settings.CACHES
    settings.CACHES = redis_down(live_caches)
    body = ask("[[shape:tool_use]] redis is down", stream=True)
    result = stream(body)
    assert (result.status, result.outcome) == (MISS, MISS)
    assembler = sse.MessageAssembler()
    parser = sse.EventParser()
    for chunk in result.stream:  # stores nothing, releases nothing: no Redis error reaches the caller
        for event, data in parser.feed(chunk):
            assembler.feed(event, data)
    assert assembler.complete and assembler.result() == make_message(body, "tool_use")
    settings.CACHES = live_caches
    b"".join(stream(ask("redis is back", stream=True)).stream)  # the kept counts reach Redis with this batch
    assert stats.totals("intents", "5m")["cache_error"] == 1


def test_a_stream_that_fails_to_open_counts_its_time(fake: Any, workload: Any) -> None:
    from respcache.exceptions import UpstreamError

    with pytest.raises(UpstreamError):
        stream(ask("[[delay:0.05]] [[status:529]] busy", stream=True))
    totals = stats.totals("intents", "5m")
    assert (totals["upstream_calls"], totals["upstream_error"]) == (1, 1)
    assert totals["upstream_ms"] >= 40
