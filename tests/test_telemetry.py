"""One structured log line per call, nothing secret in it; the outcome on the OpenTelemetry span."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rest_framework.test import APIClient

from respcache import telemetry
from respcache.models import Workload
from tests.conftest import ask

pytestmark = pytest.mark.django_db

SECRET_TEXT = "my-account-number-0042"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def lines(self) -> list[str]:
        telemetry.flush()  # lines are written in batches: take what is queued now
        return [self.format(r) for r in self.records]

    @property
    def fields(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def call_log() -> Iterator[Lines]:
    handler = Lines()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("respcache.calls")
    level = log.level
    telemetry.flush()  # lines queued by earlier calls are theirs, not this test's
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler
    telemetry.flush()
    log.removeHandler(handler)
    log.setLevel(level)


def post(key: str | None, body: Any, slug: str = "intents") -> Any:
    client = APIClient()
    headers = {"HTTP_X_API_KEY": key} if key else {}
    return client.post(f"/w/{slug}/v1/messages", data=orjson.dumps(body), content_type="application/json", **headers)


def test_one_json_line_per_call_with_the_numbers(call_log: Lines, workload: Workload, api_key: str) -> None:
    miss = post(api_key, ask(SECRET_TEXT))
    hit = post(api_key, ask(SECRET_TEXT))
    assert (miss["X-Respcache"], hit["X-Respcache"]) == ("miss", "hit")
    first, second = call_log.fields
    usage = miss.json()["usage"]
    key = miss["X-Respcache-Key"]
    for fields, outcome in ((first, "miss"), (second, "hit")):
        assert fields["event"] == "respcache.call" and fields["ts"]
        assert (fields["workload"], fields["outcome"], fields["status"]) == ("intents", outcome, 200)
        assert fields["key_prefix"] == key[: telemetry.KEY_PREFIX_CHARS]
        assert fields["caller"] == "caller" and len(fields["api_key_prefix"]) == 8
        assert (fields["input_tokens"], fields["output_tokens"]) == (usage["input_tokens"], usage["output_tokens"])
        assert fields["duration_ms"] >= 0 and fields["stream"] is False
    assert first["upstream_ms"] >= 0 and "upstream_ms" not in second
    assert "age" not in first and second["age"] >= 0


def test_no_content_no_keys_no_secrets_in_the_line(call_log: Lines, workload: Workload, api_key: str) -> None:
    response = post(api_key, ask(SECRET_TEXT, system="You are the bank's assistant."))
    post("rk-wrong-key-123", ask(SECRET_TEXT))
    text = "\n".join(call_log.lines)
    assert len(call_log.lines) == 2
    for secret in (
        SECRET_TEXT,
        "bank's assistant",
        api_key,
        api_key.split(".")[-1],
        "rk-wrong-key-123",
        response.json()["content"][0]["text"],
        response["X-Respcache-Key"],
    ):
        assert secret not in text


def test_errors_get_their_line_too(call_log: Lines, workload: Workload, api_key: str, fake: Any) -> None:
    post("wrong", ask())
    post(api_key, ask(), slug="nope")
    post(api_key, {"model": "m", "messages": []})
    post(api_key, ask("[[status:529]] busy"))
    rows = [(f["status"], f["outcome"], f.get("error_type"), f.get("caller")) for f in call_log.fields]
    assert rows == [
        (401, "error", "authentication_error", None),
        (404, "error", "not_found_error", "caller"),
        (400, "error", "invalid_request_error", "caller"),
        (529, "error", "overloaded_error", "caller"),
    ]


def test_silent_when_the_level_says_so(workload: Workload, api_key: str) -> None:
    handler = Lines()
    log = logging.getLogger("respcache.calls")
    log.addHandler(handler)
    try:
        log.setLevel(logging.WARNING)
        post(api_key, ask())
    finally:
        log.removeHandler(handler)
    assert handler.records == []


def test_span_carries_outcome_workload_and_key(workload: Workload, api_key: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    responses = []
    for _ in range(2):
        with tracer.start_as_current_span("POST /w/{workload}/v1/messages"):  # the request's span
            responses.append(post(api_key, ask()))
    miss, hit = exporter.get_finished_spans()
    for span, outcome in ((miss, "miss"), (hit, "hit")):
        assert span.attributes["respcache.outcome"] == outcome
        assert span.attributes["respcache.workload"] == "intents"
        assert span.attributes["respcache.key"] == responses[0]["X-Respcache-Key"]
        assert span.attributes["respcache.input_tokens"] == responses[0].json()["usage"]["input_tokens"]
    assert "respcache.upstream_ms" in miss.attributes and "respcache.age" in hit.attributes


def test_span_of_a_refused_call_names_the_error(workload: Workload) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("request"):
        post("wrong", ask())
    (span,) = exporter.get_finished_spans()
    assert span.attributes["respcache.outcome"] == "error"
    assert span.attributes["respcache.error_type"] == "authentication_error"


def test_a_telemetry_failure_never_fails_the_call(
    call_log: Lines, workload: Workload, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(record: Any) -> None:
        raise RuntimeError("exporter down")

    monkeypatch.setattr(telemetry, "tag_span", broken)
    assert post(api_key, ask()).status_code == 200  # the span could not be tagged
    monkeypatch.undo()
    monkeypatch.setattr(telemetry, "log_call", broken)
    response = post(api_key, ask())  # the line could not be written
    assert response.status_code == 200 and response["X-Respcache"] == "hit"


def test_streams_and_token_counts_get_their_line(call_log: Lines, workload: Workload, api_key: str, fake: Any) -> None:
    streamed = post(api_key, ask(stream=True))
    assert b"".join(streamed.streaming_content).count(b"event: message_stop") == 1
    replayed = post(api_key, ask(stream=True))
    b"".join(replayed.streaming_content)
    client = APIClient()
    counted = client.post(
        "/w/intents/v1/messages/count_tokens",
        data=orjson.dumps({"model": "m", "messages": ask()["messages"]}),
        content_type="application/json",
        HTTP_X_API_KEY=api_key,
    )
    assert counted.status_code == 200
    miss, hit, count = call_log.fields
    assert (miss["endpoint"], miss["outcome"], miss["stream"]) == ("messages", "miss", True)
    assert "input_tokens" not in miss  # the Message is still on its way when the line is written
    assert (hit["outcome"], hit["stream"]) == ("hit", True) and hit["input_tokens"] > 0
    assert (count["endpoint"], count["outcome"]) == ("count_tokens", "miss")
    assert "input_tokens" not in count and count["key_prefix"] == counted["X-Respcache-Key"][:16]


def test_every_record_field_reaches_the_line() -> None:
    """log_fields names the fields one by one (no deep copy on the hit path): a field added to
    CallRecord must reach the line too (``key`` as its prefix)."""
    import dataclasses

    record = telemetry.CallRecord(
        **{
            f.name: (True if f.type == "bool" else 1 if f.type.startswith(("int", "float")) else "x" * 20)
            for f in dataclasses.fields(telemetry.CallRecord)
        }
    )
    logged = record.log_fields()
    expected = {f.name for f in dataclasses.fields(telemetry.CallRecord)} - {"key"} | {"key_prefix"}
    assert set(logged) == expected
    assert logged["key_prefix"] == "x" * telemetry.KEY_PREFIX_CHARS


def test_a_hit_without_its_accounting_hash_still_logs_its_tokens(
    call_log: Lines, workload: Workload, api_key: str
) -> None:
    """Tokens come from the entry's accounting hash (no parse of the Message on a hit); when that
    hash is gone, from the Message itself."""
    from respcache import keys, store

    miss = post(api_key, ask("tokens without meta"))
    meta = store.full_key(
        keys.meta_key(
            keys.entry_key(
                workload="intents", version=1, fingerprint=miss["X-Respcache-Key"], upstream=store.key_space()
            )
        )
    )
    assert store.client().delete(meta) == 1
    hit = post(api_key, ask("tokens without meta"))
    assert hit["X-Respcache"] == "hit"
    usage = miss.json()["usage"]
    assert [(f["input_tokens"], f["output_tokens"]) for f in call_log.fields] == [
        (usage["input_tokens"], usage["output_tokens"])
    ] * 2


@pytest.mark.parametrize("now", [0.0, 1.9995, 1_795_000_000.0, 1_795_000_000.123456, 1_795_000_059.999])
def test_timestamp_is_iso_utc_with_milliseconds(now: float) -> None:
    from datetime import UTC, datetime

    expected = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    assert telemetry.timestamp(now) == expected
    assert telemetry.timestamp(now) == expected  # the cached second gives the same answer


def test_the_line_is_written_once_the_server_closes_the_response(
    call_log: Lines, workload: Workload, api_key: str
) -> None:
    """The hit path's line costs CPU after the answer is out, not before: the view hands back
    the response and the line follows when the server closes it (what WSGI servers do after
    sending the body), with what was measured before."""
    from django.test import RequestFactory

    from respcache.api.views import MessagesView

    request = RequestFactory().post(
        "/w/intents/v1/messages",
        data=orjson.dumps(ask("closed later")),
        content_type="application/json",
        HTTP_X_API_KEY=api_key,
    )
    response = MessagesView.as_view()(request, workload="intents")
    assert response.status_code == 200 and call_log.fields == []
    response.close()
    (line,) = call_log.fields
    assert (line["outcome"], line["status"], line["caller"]) == ("miss", 200, "caller")
    assert line["duration_ms"] >= 0


def test_lines_are_written_in_batches_by_the_workers_writer(
    call_log: Lines, workload: Workload, api_key: str, settings: Any
) -> None:
    """Lines queue and the process's writer thread writes them every CALL_LOG_BATCH_SECONDS,
    stamped with their call's time; 0 writes each during its call."""

    settings.RESPCACHE = {**settings.RESPCACHE, "CALL_LOG_BATCH_SECONDS": 0.05}
    before = time.time()
    post(api_key, ask("batched"))
    deadline = time.monotonic() + 5
    while not call_log.records and time.monotonic() < deadline:  # no flush(): the writer's job
        time.sleep(0.01)
    (record,) = call_log.records
    assert before <= record.created <= time.time()
    assert json.loads(record.getMessage())["outcome"] == "miss"
    settings.RESPCACHE = {**settings.RESPCACHE, "CALL_LOG_BATCH_SECONDS": 0}
    post(api_key, ask("batched"))
    assert len(call_log.records) == 2  # written during the call, nothing queued
    assert json.loads(call_log.records[1].getMessage())["outcome"] == "hit"


def test_a_line_is_stamped_with_its_calls_time_not_the_batchs(call_log: Lines) -> None:  # noqa: F811
    at = 1_795_000_000.25
    telemetry._queue_line(at, telemetry.CallRecord(workload="w", status=200, outcome="hit", endpoint="messages"))
    telemetry.flush()
    (record,) = call_log.records
    assert record.created == at
    assert json.loads(record.getMessage())["ts"] == "2026-11-18T11:06:40.250+00:00"


def test_one_bad_line_does_not_stop_the_others(call_log: Lines, monkeypatch: Any) -> None:  # noqa: F811
    class Bad(telemetry.CallRecord):
        def log_fields(self) -> dict[str, Any]:
            raise RuntimeError("bad line")

    good = telemetry.CallRecord(workload="w", status=200, outcome="hit", endpoint="messages")
    telemetry._queue_line(time.time(), Bad(workload="w", status=200, outcome="hit", endpoint="messages"))
    telemetry._queue_line(time.time(), good)
    telemetry.flush()  # must not raise, nor stop the listener
    assert [json.loads(r.getMessage())["outcome"] for r in call_log.records] == ["hit"]


def test_queued_lines_are_written_when_the_process_exits() -> None:
    code = (
        "import django, logging, sys; django.setup();"
        "from django.test import override_settings;"
        "override_settings(RESPCACHE={'CALL_LOG_BATCH_SECONDS': 60}).enable();"
        "from respcache import telemetry;"
        "log = logging.getLogger('respcache.calls');"
        "log.addHandler(logging.StreamHandler(sys.stdout)); log.setLevel(logging.INFO);"
        "telemetry.log_call(telemetry.CallRecord(workload='w', status=200, outcome='hit', endpoint='messages'))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert '"outcome":"hit"' in out.stdout, out.stderr


def test_timestamp_is_utc_whatever_the_local_zone(monkeypatch: Any) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        telemetry._second = (-1, "")
        assert telemetry.timestamp(1_795_000_000.5) == "2026-11-18T11:06:40.500+00:00"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_hits_line_takes_tokens_from_the_accounting_not_the_message(
    call_log: Lines, workload: Any, api_key: str, monkeypatch: Any
) -> None:  # noqa: F811
    miss = post(api_key, ask("tokens from accounting"))
    monkeypatch.setattr(telemetry, "usage_of", lambda body: (None, None))
    hit = post(api_key, ask("tokens from accounting"))
    assert hit["X-Respcache"] == "hit"
    usage = miss.json()["usage"]
    assert (call_log.fields[-1]["input_tokens"], call_log.fields[-1]["output_tokens"]) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )


def test_a_batch_is_written_together_once_its_wait_is_over(call_log: Lines, settings: Any) -> None:
    """The listener takes the first line, waits CALL_LOG_BATCH_SECONDS for the rest of its batch,
    then writes them all: nothing during the call, the batch in one go after."""
    settings.RESPCACHE = {**settings.RESPCACHE, "CALL_LOG_BATCH_SECONDS": 0.5}
    written: list[float] = []
    real_emit = call_log.emit
    call_log.emit = lambda record: (written.append(time.monotonic()), real_emit(record))  # type: ignore[method-assign]  # noqa: E501 - a spy on this test's handler
    for outcome in ("miss", "hit", "wait"):
        telemetry.log_call(telemetry.CallRecord(workload="w", status=200, outcome=outcome))
    time.sleep(0.1)
    assert call_log.records == []  # still gathering its batch
    deadline = time.monotonic() + 10
    while len(call_log.records) < 3 and time.monotonic() < deadline:  # no flush(): the listener's job
        time.sleep(0.01)
    assert [json.loads(r.getMessage())["outcome"] for r in call_log.records] == ["miss", "hit", "wait"]
    assert max(written) - min(written) < 0.25  # one batch, not one line per wait


def test_flush_does_not_wait_for_the_batch(call_log: Lines, settings: Any) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "CALL_LOG_BATCH_SECONDS": 60}
    telemetry.log_call(telemetry.CallRecord(workload="w", status=200, outcome="hit"))
    started = time.monotonic()
    telemetry.flush()
    assert time.monotonic() - started < 10  # not the batch's 60 s
    assert [json.loads(r.getMessage())["outcome"] for r in call_log.records] == ["hit"]


def _run(code: str) -> str:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_under_gevent_the_listener_never_blocks_the_hub() -> None:
    """gunicorn's gevent workers patch threading and queue: the listener is a greenlet waiting
    on gevent's primitives, so other greenlets run while it waits (idle, or for its batch)."""
    stdout = _run(
        "from gevent import monkey; monkey.patch_all()\n"
        "import django, logging, sys; django.setup()\n"
        "import gevent\n"
        "from django.test import override_settings\n"
        "override_settings(RESPCACHE={'CALL_LOG_BATCH_SECONDS': 0.2}).enable()\n"
        "from respcache import telemetry\n"
        "lines = []\n"
        "class Keep(logging.Handler):\n"
        "    def emit(self, record): lines.append(record)\n"
        "log = logging.getLogger('respcache.calls'); log.addHandler(Keep()); log.setLevel(logging.INFO)\n"
        "ticks = [0]\n"
        "def tick():\n"
        "    while True:\n"
        "        ticks[0] += 1; gevent.sleep(0.001)\n"
        "gevent.spawn(tick)\n"
        "telemetry.log_call(telemetry.CallRecord(workload='w', status=200, outcome='hit'))\n"
        "gevent.sleep(0.5)\n"
        "print(len(lines), ticks[0])\n"
    )
    lines, ticks = map(int, stdout.split())
    assert lines == 1
    assert ticks > 100  # the hub kept turning through the listener's 0.2 s wait and its idle wait


def test_a_forked_worker_starts_its_own_listener() -> None:
    """gunicorn forks its workers: a child writes its lines through its own listener; the
    parent's queued line stays the parent's."""
    stdout = _run(
        "import django, logging, os, sys; django.setup()\n"
        "from django.test import override_settings\n"
        "override_settings(RESPCACHE={'CALL_LOG_BATCH_SECONDS': 60}).enable()\n"
        "from respcache import telemetry\n"
        "handler = logging.StreamHandler(sys.stdout); handler.setFormatter(logging.Formatter('%(message)s'))\n"
        "log = logging.getLogger('respcache.calls'); log.addHandler(handler); log.setLevel(logging.INFO)\n"
        "telemetry.log_call(telemetry.CallRecord(workload='parent', status=200, outcome='hit'))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    telemetry.log_call(telemetry.CallRecord(workload='child', status=200, outcome='hit'))\n"
        "    telemetry.flush(); sys.stdout.flush(); os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "telemetry.flush()\n"
    )
    workloads = [json.loads(line)["workload"] for line in stdout.splitlines()]
    assert sorted(workloads) == ["child", "parent"]


def test_a_fall_through_is_logged_as_fallthrough_though_its_header_says_miss(
    call_log: Lines, make_workload: Any, make_key: Any
) -> None:
    """A waiter that gave up after wait_max and called the upstream itself: the header keeps the
    contract's ``miss``, the call log says what happened, as the counters do."""
    from respcache import keys, locks, store

    workload = make_workload("patient", wait_max=0.1)
    key = make_key(workload)
    body = ask("nobody answers")
    fingerprint = keys.request_fingerprint(body)
    raw = keys.entry_key(workload="patient", version=1, fingerprint=fingerprint, upstream=store.key_space())
    assert locks.acquire(store.full_key(keys.lock_key(raw)), token="stuck-holder", ttl_seconds=30)
    response = post(key, body, slug="patient")
    assert response["X-Respcache"] == "miss"
    assert call_log.fields[-1]["outcome"] == "fallthrough"
