"""The bench (``make bench``): its helpers, and one quick end-to-end run whose exact counts are
checked (never its timings)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import keybuild, loadgen
from bench.report import Row, percentile, ratio, render
from bench.upstream import sized_message
from respcache.keys import request_fingerprint
from tests.conftest import ask
from tests.reference_keys import reference_fingerprint

ROOT = Path(__file__).resolve().parent.parent


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 50) == 2
    assert math.isnan(percentile([], 50))


def test_ratio_and_table_marks() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) is None and ratio(None, 1.0) is None
    rows = [
        Row.compare("hit p50", 0.0012, "s", 0.001, "floor", target="≤ 1.20× floor", ok=True),
        Row.compare("req/s", 800.0, "req/s", 1000.0, "floor", target="≥ 0.85× floor", ok=False),
        Row.compare("size", 512.0, "bytes", 1024.0, "answer"),
    ]
    table = render(rows, ["title"])
    lines = table.splitlines()
    assert lines[0] == "title"
    assert "1.20 ms" in table and "floor 1.00 ms" in table and "1.20×" in table
    assert "800/s" in table and "0.80×" in table and "0.50×" in table
    assert lines[3].endswith("pass") and lines[4].endswith("MISS")
    assert lines[-1] == "targets met: 1/2"


def test_sized_answers_are_about_the_asked_size() -> None:
    for size in (1_000, 20_000):
        message = sized_message(ask(f"[[answer_bytes:{size}]] hello"))
        assert size <= len(json.dumps(message)) < size + 20
    assert sized_message(ask("hello")) == sized_message(ask("hello"))  # deterministic
    assert len(json.dumps(sized_message(ask("hello")))) < 1_000


def test_key_building_bodies_and_recipes() -> None:
    for size in (1_000, 100_000):
        body = keybuild.make_request(size)
        raw = orjson.dumps(body)
        assert size <= len(raw) < size * 1.3
        assert keybuild.respcache_key(body) == request_fingerprint(body) == reference_fingerprint(raw)
    body = {"b": 1, "a": [1.0, "x"]}
    assert keybuild.article_key(body) == __import__("hashlib").sha256(b'{"a":[1.0,"x"],"b":1}').hexdigest()
    assert keybuild.throughput(keybuild.article_key, body, min_time=0.001, repeats=1) > 0


def test_load_generator_against_the_fake_upstream(fake_server: Any) -> None:
    host, port = fake_server.server.server_address[:2]
    body = orjson.dumps(ask("[[answer_bytes:2000]] hi"))
    request = loadgen.build_request("POST", "/v1/messages", {"host": "x", "content-type": "application/json"}, body)
    assert b"content-length: %d\r\n\r\n" % len(body) in request
    (one,) = loadgen.sequential(host, port, [request])
    assert one.status == 200 and one.header("Content-Type") == "application/json"
    assert json.loads(one.body)["type"] == "message"
    before = len(fake_server.message_calls())
    run = loadgen.closed_loop(
        host, port, request, concurrency=4, duration=0.2, expect=b"content-type: application/json"
    )
    assert run.errors == 0 and run.requests > 0 and run.rate > 0
    answers = loadgen.burst(host, port, request, count=10)
    assert [a.status for a in answers] == [200] * 10
    assert len(fake_server.message_calls()) - before == run.requests + 10


def test_quick_bench_end_to_end(tmp_path: Path) -> None:
    """``python -m bench --quick``: starts and stops everything, prints the table, writes the JSON;
    the exact counts in it hold (timings are not judged here)."""
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "GUNICORN_", "RESPCACHE_"))}
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "targets met:" in done.stdout
    rows = {row["measure"]: row for row in json.loads(out.read_text())["rows"]}
    for measure in (
        "hit 1 KB, 1 in flight: p50",
        "hit 20 KB, 16 in flight: req/s",
        "hit 1 KB: CPU per request (in process)",
        "miss 1 KB: p50",
        "stampede of 20: waiters served after the write, p99",
        "key building 100 KB: canonicalise + SHA-256",
        "memory per entry 20 KB (entry + meta + notes)",
        "hit 20 KB: record decode CPU, encrypted",
        "hit 1 KB: CPU per hit, encrypted (hit + decode difference)",
        "peak memory: 1 KB request (process high-water)",
        "peak memory: largest body of most values (refused, 400)",
        "peak memory: deepest tool_result content (refused, 400)",
        "peak memory: largest body, one text string (accepted)",
        "capacity: Redis CPU per hit, 1 KB (server main thread)",
        "capacity: Redis command time per miss, 1 KB (commandstats)",
        "capacity: Redis bytes per miss (in + out), 1 KB",
        "capacity: worker CPU per hit, 1 KB (gunicorn workers, 16 in flight)",
        "capacity: hits/s per Redis shard at 100% CPU (1e6 / CPU µs per hit)",
    ):
        assert measure in rows, measure
    assert rows["hit 1 KB, 1 in flight: req/s"]["target"] == "≥ 1.00× floor"
    assert rows["hit 1 KB, 16 in flight: p99"]["target"] == "≤ 1.50× floor"
    assert rows["capacity: Redis round trips per hit, 1 KB (16 in flight)"]["value"] <= 2
    assert rows["capacity: Redis round trips per miss, 1 KB"]["value"] > 1  # a miss is several commands
    assert rows["capacity: Redis CPU per hit, 1 KB (server main thread)"]["value"] > 0
    if "REDIS_CLUSTER_NODES" in (ROOT / "project" / "settings.py").read_text():  # the cluster client is here
        assert rows["3 shards: Redis round trips per hit, all shards"]["value"] <= 2
        assert rows["3 shards: hit req/s, 1 KB, 16 in flight"]["baseline"] > 0  # the 1-shard run
    assert rows["Redis round trips per hit, 1 KB"]["value"] <= 2
    assert rows["DB queries per hit (steady state)"]["value"] == 0
    assert rows["stampede of 20: upstream calls (worst of 1)"]["value"] == 1
    identical = rows["keys identical to the reference canonicaliser"]
    assert identical["value"] == identical["baseline"] > 100
    stopped = re.search(r"bench: stopped (.*); removed (\S+)", done.stderr)
    assert stopped is not None, done.stderr[-2000:]
    pids = [int(item.rsplit(" ", 1)[1]) for item in stopped.group(1).split(", ")]
    assert len(pids) == 4  # redis, upstream, service, floor
    assert not any(alive(pid) for pid in pids)
    assert not Path(stopped.group(2)).exists()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 12", b"HTTP/1.1 200 OK\r\ncontent-length:12\r\nx: y"],
)
def test_content_length_parsing(head: bytes) -> None:
    assert loadgen._content_length(head) == 12


def test_redis_cost_counts_a_scripts_commands_once() -> None:
    """commandstats count the commands a script calls under their own names too: with scripts
    in the run, those names are inside EVALSHA's time; without, every command counts."""
    from bench.capacity import INNER, Cost, RedisSample

    assert {"get", "hincrby", "hmget"} <= INNER
    before = RedisSample(0.0, 1.0, 10, 1000, {"get": (5, 10.0), "info": (1, 50.0)})
    scripted = RedisSample(
        2.0, 1.5, 110, 21000, {"get": (205, 110.0), "evalsha": (100, 900.0), "info": (2, 100.0), "set": (10, 20.0)}
    )
    cost = Cost.between(before, scripted)
    assert cost.command_us == 900.0  # EVALSHA's; GET and SET are names the scripts call
    assert cost.cpu_us == 500_000.0 and cost.reads == 100 and cost.bytes == 20_000
    assert cost.per(100)["round_trips"] == 1.0 and cost.commands["evalsha"] == 100
    plain = Cost.between(before, RedisSample(1.0, 1.1, 60, 6000, {"get": (55, 35.0), "info": (2, 100.0)}))
    assert plain.command_us == 25.0  # the floor's GETs, INFO left out
    idle = Cost(seconds=1.0, cpu_us=1000.0, command_us=0.0, reads=1, bytes=100)
    assert cost.less_idle(idle).cpu_us == 500_000.0 - 2000.0
