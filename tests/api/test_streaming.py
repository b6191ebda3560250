"""Streaming and full Messages API fidelity, through the official SDK against a live server.

The matrix: (create, stream) × (miss, hit, wait) × every response shape the fake upstream makes,
each equal (model_dump) to the Message the SDK parses straight from the fake.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2 as httpx
import orjson
import pytest
from anthropic.types import Message

from respcache import keys, sse, stats, store
from respcache.models import Workload
from tests.conftest import ask
from tests.fake_anthropic import SHAPES

pytestmark = pytest.mark.django_db(transaction=True)

MODES = ("create", "stream")


def call(client: anthropic.Anthropic, mode: str, body: dict[str, Any], **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """(response headers, the Message's model_dump) by messages.create or messages.stream."""
    if mode == "create":
        raw = client.messages.with_raw_response.create(**body, **kwargs)
        return raw.headers, raw.parse().model_dump()
    with client.messages.stream(**body, **kwargs) as stream:
        message = stream.get_final_message()
        return stream.response.headers, message.model_dump()


def as_message(dump: dict[str, Any]) -> dict[str, Any]:
    """A streamed (ParsedMessage) or created Message, compared as the plain Message type."""
    return Message.model_validate(dump).model_dump()


def direct(fake_server: Any, mode: str, body: dict[str, Any]) -> dict[str, Any]:
    client = anthropic.Anthropic(base_url=fake_server.url, api_key="k", max_retries=0)
    return call(client, mode, body)[1]


def upstream_calls(fake: Any, path: str = "/v1/messages") -> int:
    """Calls respcache made (with the server's key), not the tests' direct ones."""

    def from_respcache(c: dict[str, Any]) -> bool:
        return {k.lower(): v for k, v in c["headers"].items()}.get("authorization") == "Bearer sk-server-key"

    with fake.lock:
        return sum(1 for c in fake.calls if c["path"] == path and from_respcache(c))


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll ``predicate`` (bounded, never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.005)


def redis_names(body: dict[str, Any], slug: str = "intents", version: int = 1) -> dict[str, str]:
    raw = keys.entry_key(workload=slug, version=version, fingerprint=keys.request_fingerprint(body))
    return {
        "entry": store.full_key(raw),
        "lock": store.full_key(keys.lock_key(raw)),
        "channel": store.full_key(keys.channel_name(raw)),
    }


def subscribers(redis: Any, channel: str) -> int:
    return int(redis.pubsub_numsub(channel)[0][1])


class Background(threading.Thread):
    """A call in a thread; ``outcome()`` re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.value: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in outcome()
            self.error = exc

    def outcome(self) -> Any:
        self.join(30)
        assert not self.is_alive(), "background call did not finish"
        if self.error is not None:
            raise self.error
        return self.value


# --- the fidelity matrix ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("state", ["miss", "hit", "wait"])
def test_fidelity(sdk: Any, fake: Any, fake_server: Any, redis_db: Any, shape: str, mode: str, state: str) -> None:
    body = ask(f"[[shape:{shape}]] [[stream_hold_after:3]] fidelity {mode} {state}")
    expected = direct(fake_server, mode, body)
    # Hits and waits are served from an entry the *other* mode stored: the modes share entries.
    other = "stream" if mode == "create" else "create"
    client = sdk(timeout=20)
    if state == "hit":
        assert call(client, other, body)[0]["x-respcache"] == "miss"
    if state == "wait":
        gate = fake.stream_gate if other == "stream" else fake.pause
        gate.clear()  # the holder's upstream answer is held (mid-stream for a streaming holder)
        holder = Background(lambda: call(sdk(timeout=20), other, body))
        wait_until(lambda: upstream_calls(fake) == 1, "the holder's upstream call")
        waiter = Background(lambda: call(sdk(timeout=20), mode, body))
        wait_until(lambda: subscribers(redis_db, redis_names(body)["channel"]) == 1, "the waiter")
        gate.set()
        assert holder.outcome()[0]["x-respcache"] == "miss"
        headers, got = waiter.outcome()
    else:
        headers, got = call(client, mode, body)
    assert headers["x-respcache"] == state
    assert got == expected
    assert upstream_calls(fake) == 1


@pytest.mark.parametrize("shape", SHAPES)
def test_the_fake_streams_the_same_message_it_creates(fake_server: Any, shape: str) -> None:
    # What makes the cross-mode cases above meaningful.
    body = ask(f"[[shape:{shape}]] same")
    assert as_message(direct(fake_server, "stream", body)) == as_message(direct(fake_server, "create", body))


# --- streaming on a miss ----------------------------------------------------------------------


def test_a_miss_passes_events_on_before_the_upstream_has_finished(
    live_server: Any, api_key: str, fake: Any, fake_server: Any, redis_db: Any
) -> None:
    body = ask("[[stream_hold_after:2]] tee", stream=True)
    fake.stream_gate.clear()
    url = f"{live_server.url}/w/intents/v1/messages"
    with httpx.stream("POST", url, content=orjson.dumps(body), headers={"x-api-key": api_key}, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-respcache"] == "miss"
        assert response.headers["x-respcache-key"] == keys.request_fingerprint(body)
        assert "age" not in response.headers
        lines = response.iter_lines()
        assert next(lines) == "event: message_start"
        # The upstream is held mid-stream: nothing is stored, the key is locked.
        assert not redis_db.exists(redis_names(body)["entry"])
        assert redis_db.exists(redis_names(body)["lock"])
        fake.stream_gate.set()
        rest = "\n".join(lines)
    assert rest.rstrip().endswith('data: {"type": "message_stop"}')
    assert redis_db.exists(redis_names(body)["entry"])
    assert not redis_db.exists(redis_names(body)["lock"])


def test_stream_hit_has_the_cache_headers(sdk: Any, fake: Any) -> None:
    client = sdk()
    call(client, "create", ask())
    with client.messages.stream(**ask()) as stream:
        headers = stream.response.headers
        stream.get_final_message()
    assert headers["x-respcache"] == "hit"
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-respcache-key"] == keys.request_fingerprint(ask())
    assert int(headers["age"]) >= 0


def test_stream_true_through_create_is_a_stream_too(sdk: Any, fake: Any, fake_server: Any) -> None:
    client = sdk()
    for expected_status in ("miss", "hit"):
        raw = client.messages.with_raw_response.create(**ask(), stream=True)
        assert raw.headers["x-respcache"] == expected_status
        events = [event.type for event in raw.parse()]
        assert events[0] == "message_start" and events[-1] == "message_stop"


def test_stream_counts_what_happened(sdk: Any, fake: Any) -> None:
    client = sdk()
    call(client, "stream", ask())
    call(client, "stream", ask())
    totals = stats.totals("intents", "5m")
    assert (totals["miss"], totals["hit"], totals["upstream_calls"], totals["written"]) == (1, 1, 1, 1)
    assert totals["upstream_error"] == 0
    assert totals["saved_out"] == ask_usage_output(client)


def ask_usage_output(client: anthropic.Anthropic) -> int:
    return int(call(client, "create", ask())[1]["usage"]["output_tokens"])


# --- the caller goes away, the upstream fails ------------------------------------------------------


def test_a_caller_who_disconnects_stores_nothing_and_a_waiter_takes_over(
    live_server: Any, api_key: str, sdk: Any, fake: Any, redis_db: Any
) -> None:
    body = ask("[[stream_hold_after:2]] [[stream_delay:0.02]] walk away", stream=True)
    names = redis_names(body)
    fake.stream_gate.clear()
    url = f"{live_server.url}/w/intents/v1/messages"
    with httpx.stream("POST", url, content=orjson.dumps(body), headers={"x-api-key": api_key}, timeout=10) as response:
        assert next(response.iter_lines()) == "event: message_start"
        create_body = {k: v for k, v in body.items() if k != "stream"}
        waiter = Background(lambda: call(sdk(timeout=20), "create", create_body))
        wait_until(lambda: subscribers(redis_db, names["channel"]) == 1, "the waiter")
    # The client is gone; the upstream goes on, respcache notices on its next write.
    fake.stream_gate.set()
    headers, message = waiter.outcome()
    assert headers["x-respcache"] == "miss"  # told "abandoned", it took the lock and asked itself
    assert upstream_calls(fake) == 2
    assert message["stop_reason"] == "end_turn"


@pytest.mark.parametrize("mode", MODES)
def test_an_error_event_mid_stream_reaches_the_caller_and_the_waiters_and_is_never_stored(
    sdk: Any, fake: Any, redis_db: Any, mode: str
) -> None:
    body = ask("[[stream_hold_after:2]] [[stream_error_after:4]] overloaded mid-stream")
    fake.stream_gate.clear()
    holder = Background(lambda: call(sdk(timeout=20), "stream", body))
    wait_until(lambda: upstream_calls(fake) == 1, "the holder's upstream call")
    waiter = Background(lambda: call(sdk(timeout=20), mode, body))
    wait_until(lambda: subscribers(redis_db, redis_names(body)["channel"]) == 1, "the waiter")
    fake.stream_gate.set()
    with pytest.raises(anthropic.APIStatusError) as holder_error:
        holder.outcome()
    assert holder_error.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(anthropic.APIStatusError) as waiter_error:
        waiter.outcome()
    assert waiter_error.value.body["error"]["type"] == "overloaded_error"
    if mode == "create":
        assert waiter_error.value.status_code == 529
    assert upstream_calls(fake) == 1  # the waiter stopped waiting and did not call again
    assert not redis_db.exists(redis_names(body)["entry"])
    assert not redis_db.exists(redis_names(body)["lock"])
    assert stats.totals("intents", "5m")["upstream_error"] >= 1


def test_a_stream_cut_short_ends_with_an_error_event_and_is_never_stored(sdk: Any, fake: Any, redis_db: Any) -> None:
    body = ask("[[stream_fail_after:4]] cut short")
    client = sdk()
    for attempt in (1, 2):
        with pytest.raises(anthropic.APIStatusError) as info:
            call(client, "stream", body)
        assert info.value.body["error"]["type"] == "api_error"
        assert "message_stop" in info.value.body["error"]["message"]
        assert upstream_calls(fake) == attempt
    assert not redis_db.exists(redis_names(body)["lock"])


# --- errors before the first byte -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc_class", "error_type"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
    ],
)
def test_upstream_errors_on_a_stream_keep_status_and_body_and_are_never_stored(
    sdk: Any, fake: Any, status: int, exc_class: type, error_type: str
) -> None:
    client = sdk()
    body = ask(f"[[status:{status}]]")
    for attempt in (1, 2):
        with pytest.raises(exc_class) as info:
            call(client, "stream", body)
        assert info.value.status_code == status
        assert info.value.body == {"type": "error", "error": {"type": error_type, "message": f"fake {status}"}}
        if status == 429:
            assert info.value.response.headers["retry-after"] == "7"
        assert upstream_calls(fake) == attempt


def test_sdk_retries_a_streamed_429_by_its_retry_after(sdk: Any, fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client = sdk().with_options(max_retries=1)
    waits: list[float] = []
    compute = client._calculate_retry_timeout

    def spy(*args: Any) -> float:
        waits.append(compute(*args))
        return 0.0  # the SDK's computed wait is recorded, not slept

    monkeypatch.setattr(client, "_calculate_retry_timeout", spy)
    with pytest.raises(anthropic.RateLimitError):
        call(client, "stream", ask("[[status:429]] retry me"))
    assert waits == [7.0]
    assert upstream_calls(fake) == 2


# --- the other ways through -------------------------------------------------------------------


def test_stream_bypass_refresh_and_no_store(sdk: Any, fake: Any, fake_server: Any) -> None:
    client = sdk()
    hot = {"extra_body": {"temperature": 0.7}}
    for _ in range(2):
        assert call(client, "stream", ask(), **hot)[0]["x-respcache"] == "bypass"
    assert upstream_calls(fake) == 2
    headers, _ = call(client, "stream", ask(), extra_headers={"cache-control": "no-store"})
    assert headers["x-respcache"] == "miss"
    headers, refreshed = call(client, "stream", ask(), extra_headers={"cache-control": "no-cache"})
    assert headers["x-respcache"] == "refresh"
    headers, hit = call(client, "create", ask())
    assert headers["x-respcache"] == "hit"
    assert as_message(hit) == as_message(refreshed) == as_message(direct(fake_server, "create", ask()))
    assert upstream_calls(fake) == 4


def test_a_streaming_waiter_falls_through_after_wait_max_and_stores(
    sdk: Any, fake: Any, redis_db: Any, workload: Workload
) -> None:
    Workload.objects.filter(pk=workload.pk).update(wait_max=0.2)
    body = ask("fall through")
    redis_db.set(redis_names(body)["lock"], "someone-else", px=30_000)  # a holder that never answers
    headers, message = call(sdk(), "stream", body)
    assert headers["x-respcache"] == "miss"
    assert stats.totals("intents", "5m")["fallthrough"] == 1
    assert call(sdk(), "create", body)[0]["x-respcache"] == "hit"


def test_streaming_stampede_one_upstream_call(sdk: Any, fake: Any, fake_server: Any) -> None:
    threads_n = 12
    body = ask("[[delay:0.3]] stampede, streamed")
    barrier = threading.Barrier(threads_n)

    def worker(mode: str) -> tuple[str, dict[str, Any]]:
        client = sdk(timeout=30)
        barrier.wait()
        headers, message = call(client, mode, body)
        return headers["x-respcache"], as_message(message)

    callers = [Background(lambda mode=MODES[i % 2]: worker(mode)) for i in range(threads_n)]  # type: ignore[misc]
    results = [c.outcome() for c in callers]
    assert upstream_calls(fake) == 1
    statuses = [s for s, _ in results]
    assert statuses.count("miss") == 1 and set(statuses) <= {"miss", "wait", "hit"}
    expected = as_message(direct(fake_server, "create", body))
    assert all(message == expected for _, message in results)


def test_replayed_stream_is_well_formed_sse(live_server: Any, api_key: str, sdk: Any, fake: Any) -> None:
    call(sdk(), "create", ask())
    response = httpx.post(
        f"{live_server.url}/w/intents/v1/messages",
        content=orjson.dumps(ask(stream=True)),
        headers={"x-api-key": api_key},
    )
    assert response.headers["x-respcache"] == "hit"
    assert response.headers["cache-control"] == "no-cache"
    events = sse.EventParser().feed(response.content)
    assert [name for name, _ in events][0] == "message_start"
    assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]
    assert all(orjson.loads(data)["type"] == name for name, data in events)


def test_a_long_stream_keeps_its_lock_alive_and_its_waiter_waits_for_it(
    live_server: Any, make_workload: Any, make_key: Any, sdk: Any, fake: Any, redis_db: Any
) -> None:
    """lock_ttl is a liveness window: a stream held open for many lock TTLs keeps its lock
    (renewed), so a caller of the same key waits for its answer instead of asking again."""
    from respcache.models import Workload

    Workload.objects.filter(slug="intents").update(lock_ttl=0.3)
    key = make_key(Workload.objects.get(slug="intents"))
    body = ask("[[stream_hold_after:2]] long generation", stream=True)
    names = redis_names(body)
    fake.stream_gate.clear()
    url = f"{live_server.url}/w/intents/v1/messages"
    with httpx.stream("POST", url, content=orjson.dumps(body), headers={"x-api-key": key}, timeout=20) as response:
        lines = response.iter_lines()
        assert next(lines) == "event: message_start"
        holder = redis_db.get(names["lock"])
        create_body = {k: v for k, v in body.items() if k != "stream"}
        waiter = Background(lambda: call(sdk(key=key, timeout=20), "create", create_body))
        wait_until(lambda: subscribers(redis_db, names["channel"]) == 1, "the waiter")
        time.sleep(1.5)  # five lock TTLs
        assert holder is not None and redis_db.get(names["lock"]) == holder  # still the holder's
        fake.stream_gate.set()
        rest = "\n".join(lines)
    assert rest.rstrip().endswith('data: {"type": "message_stop"}')
    headers, message = waiter.outcome()
    assert headers["x-respcache"] == "wait"
    assert upstream_calls(fake) == 1
    assert not redis_db.exists(names["lock"])
