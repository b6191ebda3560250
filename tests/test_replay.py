"""respcache_replay against real Redis and the fake upstream: the summary's numbers, concurrency,
bad lines, --json, progress on a terminal or not, and Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command

from respcache.conf import DEFAULT_MODEL_PRICES
from respcache.management.replay import model_price
from tests.conftest import ask
from tests.fake_anthropic import make_message

BASE_DIR = Path(__file__).resolve().parent.parent
SONNET = "claude-sonnet-4-5-20250929"


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def replay(path: Path, *args: str) -> tuple[dict[str, Any], str]:
    out, err = StringIO(), StringIO()
    call_command("respcache_replay", str(path), "--workload", "intents", "--json", *args, stdout=out, stderr=err)
    return json.loads(out.getvalue()), err.getvalue()


@pytest.mark.django_db
def test_the_same_file_twice_is_all_misses_then_all_hits_saving_the_usage(
    fake: Any, workload: Any, tmp_path: Path
) -> None:
    bodies = [ask(f"question {i}", model=SONNET) for i in range(4)] + [ask("unpriced")]
    path = write_lines(tmp_path / "calls.jsonl", bodies)
    first, _ = replay(path, "--concurrency", "3")
    assert (first["lines"], first["done"], first["miss"], first["hit"], first["saved_in"]) == (5, 5, 5, 0, 0)
    assert first["cost_saved_usd"] == 0.0
    second, _ = replay(path)
    assert (second["hit"], second["miss"], second["wait"], second["errors"], second["bad_lines"]) == (5, 0, 0, 0, 0)
    usages = [make_message(body)["usage"] for body in bodies]
    assert second["saved_in"] == sum(u["input_tokens"] for u in usages)
    assert second["saved_out"] == sum(u["output_tokens"] for u in usages)
    priced_in = sum(u["input_tokens"] for u in usages[:4])
    priced_out = sum(u["output_tokens"] for u in usages[:4])
    assert second["cost_saved_usd"] == pytest.approx((priced_in * 3.0 + priced_out * 15.0) / 1e6)
    assert second["cost_unknown_models"] == ["claude-test-1"]
    assert len(fake.message_calls()) == 5


@pytest.mark.django_db
def test_the_text_summary_names_every_number(fake: Any, workload: Any, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "calls.jsonl", [ask("a")])
    call_command("respcache_replay", str(path), "--workload", "intents", stdout=StringIO(), stderr=StringIO())
    out = StringIO()
    call_command("respcache_replay", str(path), "--workload", "intents", stdout=out, stderr=StringIO())
    usage = make_message(ask("a"))["usage"]
    assert out.getvalue().splitlines() == [
        "replayed 1 of 1 lines: 1 hits, 0 misses, 0 waits, 0 fallthrough, 0 bypass, 0 errors, 0 bad lines",
        f"tokens saved: {usage['input_tokens']} input, {usage['output_tokens']} output",
        "estimated cost saved: unknown (cost unknown for claude-test-1: no price)",
    ]


@pytest.mark.django_db(transaction=True)
def test_calls_run_concurrently_and_identical_lines_share_one_upstream_call(
    fake: Any, workload: Any, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "calls.jsonl", [ask(f"q{i}") for i in range(10)])
    fake.pause.clear()  # the fake holds every answer: count how many calls are in flight at once
    done: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: done.update(summary=replay(path, "--concurrency", "4")[0]))
    thread.start()
    deadline = time.monotonic() + 20
    while len(fake.message_calls()) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(fake.message_calls()) == 4  # four at once, and no more while they are held
    fake.pause.set()
    thread.join(30)
    assert done["summary"]["miss"] == 10

    same = write_lines(tmp_path / "same.jsonl", [ask("shared [[delay:0.5]]")] * 6)
    summary, _ = replay(same, "--concurrency", "6")
    assert summary["miss"] == 1 and summary["wait"] + summary["hit"] == 5
    assert summary["saved_out"] == 5 * make_message(ask("shared [[delay:0.5]]"))["usage"]["output_tokens"]
    assert len(fake.message_calls()) == 11


@pytest.mark.django_db
def test_bad_lines_are_reported_by_number_and_skipped(fake: Any, workload: Any, tmp_path: Path) -> None:
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    lines = [
        ask("good one"),
        "not json",
        "[1, 2]",
        "",  # blank lines are not lines
        {"model": "claude-test-1", "messages": []},  # no max_tokens: the API's 400
        ask("bad stream", stream="yes"),
        '{"model": "m", "max_tokens": 5, "messages": [], "temperature": NaN}',
        ask("too deep", system=deep),
        ask("good two"),
    ]
    path = write_lines(tmp_path / "calls.jsonl", lines)
    summary, err = replay(path)
    assert summary["lines"] == 8 and summary["done"] == 8 and summary["miss"] == 2
    bad = {entry["line"]: entry["error"] for entry in summary["bad"]}
    assert sorted(bad) == [2, 3, 5, 6, 7, 8]
    assert "not valid JSON" in bad[2] and "JSON object" in bad[3] and "max_tokens" in bad[5]
    assert "stream" in bad[6] and "deep" in bad[8]
    for number in bad:
        assert re.search(rf"^line {number}: .*\(skipped\)$", err, re.M)


@pytest.mark.django_db
def test_upstream_errors_are_counted_and_reported(fake: Any, workload: Any, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "calls.jsonl", [ask("fine"), ask("[[status:500]] broken")])
    summary, err = replay(path)
    assert (summary["miss"], summary["errors"]) == (1, 1)
    assert summary["error_lines"][0]["line"] == 2
    assert re.search(r"^line 2: .*error", err, re.M)


@pytest.mark.django_db
def test_streaming_lines_are_replayed_without_streaming(fake: Any, workload: Any, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "calls.jsonl", [ask("streamed", stream=True)])
    summary, _ = replay(path)
    assert summary["miss"] == 1 and summary["streamed_as_json"] == 1
    (call,) = fake.message_calls()
    assert "stream" not in call["body"]
    again, _ = replay(write_lines(tmp_path / "plain.jsonl", [ask("streamed")]))
    assert again["hit"] == 1  # the same key: stream is not part of it


@pytest.mark.django_db
def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one(fake: Any, workload: Any, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "calls.jsonl", [ask(f"p{i}") for i in range(3)])
    _, err = replay(path, "--concurrency", "1")
    assert err.splitlines() == [
        "progress: 1/3 lines (hit 0, miss 1, wait 0, errors 0, bad 0)",
        "progress: 2/3 lines (hit 0, miss 2, wait 0, errors 0, bad 0)",
        "progress: 3/3 lines (hit 0, miss 3, wait 0, errors 0, bad 0)",
    ]

    class Terminal(StringIO):
        def isatty(self) -> bool:
            return True

    terminal, out = Terminal(), StringIO()
    call_command("respcache_replay", str(path), "--workload", "intents", stdout=out, stderr=terminal)
    shown = terminal.getvalue()
    assert "progress:" not in shown and "3/3" in shown and "━" in shown  # rich's bar
    assert out.getvalue().startswith("replayed 3 of 3 lines: 3 hits")


@pytest.mark.django_db
def test_bad_arguments_are_command_errors(workload: Any, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "calls.jsonl", [ask()])
    with pytest.raises(CommandError, match="unknown workload"):
        call_command("respcache_replay", str(path), "--workload", "nope")
    with pytest.raises(CommandError, match="--concurrency"):
        call_command("respcache_replay", str(path), "--workload", "intents", "--concurrency", "0")
    with pytest.raises(CommandError, match="cannot read"):
        call_command("respcache_replay", str(tmp_path / "missing.jsonl"), "--workload", "intents")


def test_prices_match_the_reference_and_can_be_overridden(settings: Any) -> None:
    reference = (BASE_DIR / "docs" / "reference.md").read_text()
    documented = {
        model: {"input": float(i), "output": float(o)}
        for model, i, o in re.findall(r"^\| `(claude-[a-z0-9-]+)` \| ([\d.]+) \| ([\d.]+) \|$", reference, re.M)
    }
    assert documented == DEFAULT_MODEL_PRICES
    assert model_price("claude-sonnet-4-5-20250929") == (3.0, 15.0)
    assert model_price("claude-3-5-haiku-latest") == (0.8, 4.0)
    assert model_price("claude-test-1") is None
    settings.RESPCACHE = {**settings.RESPCACHE, "MODEL_PRICES": {"claude-test-1": {"input": 2, "output": 4}}}
    assert model_price("claude-test-1") == (2.0, 4.0)


@pytest.mark.django_db(transaction=True)
def test_ctrl_c_stops_cleanly_with_the_partial_summary(fake: Any, workload: Any, tmp_path: Path) -> None:
    from tests.test_deploy import database_url

    lines = [ask("one"), ask("two"), ask("slow [[delay:20]]"), ask("four"), ask("five")]
    path = write_lines(tmp_path / "calls.jsonl", lines)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "REDIS_URL": django_settings.CACHES["respcache"]["LOCATION"],
        "DATABASE_URL": database_url(),
        "RESPCACHE_TEST_UPSTREAM": "anthropic",
        "ANTHROPIC_BASE_URL": fake.url,
        "ANTHROPIC_API_KEY": "sk-server-key",
    }
    command = [sys.executable, "manage.py", "respcache_replay", str(path), "--workload", "intents"]
    process = subprocess.Popen(
        [*command, "--concurrency", "1", "--json"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while len(fake.message_calls()) < 3 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        assert len(fake.message_calls()) == 3, process.communicate(timeout=5)  # the slow call is in flight
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err.decode()
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["abandoned"] == 1
    assert (summary["lines"], summary["done"], summary["miss"]) == (5, 2, 2)
    assert "Traceback" not in err.decode()
