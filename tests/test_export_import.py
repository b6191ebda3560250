"""respcache_export and respcache_import against real Redis: a round trip keeps every answer
byte for byte (as the SDK's raw HTTP response shows it), a bad file imports nothing."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.core.management import CommandError, call_command

from respcache import keys, selectors, store
from respcache.models import Workload
from respcache.services import workload_bump
from tests.conftest import ask

BODIES = [
    ask("password reset"),
    ask("[[shape:tool_use]] weather in Paris"),
    ask('héllo ✓ 日本語 \u2028 "quoted" \\ back'),
]


def served(client: Any, body: dict[str, Any]) -> tuple[str, bytes]:
    raw = client.messages.with_raw_response.create(**body)
    return raw.headers["x-respcache"], raw.http_response.content


def export(slug: str, path: Path) -> list[dict[str, Any]]:
    err = StringIO()
    call_command("respcache_export", slug, "-o", str(path), stderr=err)
    assert "exported" in err.getvalue()
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def run_import(*args: str) -> str:
    out = StringIO()
    call_command("respcache_import", *args, stdout=out)
    return out.getvalue()


def entry_count(slug: str) -> int:
    return store.count_entries(slug)


@pytest.mark.django_db(transaction=True)
def test_round_trip_keeps_every_answer_byte_for_byte(
    sdk: Any, fake: Any, make_key: Any, workload: Workload, tmp_path: Path
) -> None:
    client = sdk()
    before = {}
    for body in BODIES:
        assert served(client, body)[0] == "miss"
        status, content = served(client, body)
        assert status == "hit"
        before[body["messages"][0]["content"]] = content
    lines = export("intents", tmp_path / "intents.jsonl")
    header, *entries, end = lines
    assert header["format"] == "respcache-export" and header["version"] == 1 and header["key_version"] == 1
    assert end == {"end": True, "entries": 3}
    assert {e["answer"].encode() for e in entries} == set(before.values())
    assert all(e["ttl_ms"] > 0 and e["meta"]["in"] and "reads" not in e["meta"] for e in entries)

    call_command("respcache_purge", "intents", stdout=StringIO())
    workload_bump(Workload.objects.get(slug="intents"), actor="test")  # lands under the new version
    upstream_calls = len(fake.message_calls())
    assert run_import("intents", str(tmp_path / "intents.jsonl")) == "imported 3 entries into intents\n"
    other = Workload.objects.create(slug="copy")
    assert run_import("copy", str(tmp_path / "intents.jsonl")) == "imported 3 entries into copy\n"
    copy_client = sdk("copy", key=make_key(other))
    for body in BODIES:
        assert served(client, body) == ("hit", before[body["messages"][0]["content"]])
        assert served(copy_client, body) == ("hit", before[body["messages"][0]["content"]])
    assert len(fake.message_calls()) == upstream_calls
    version = store.current_version("intents", 2)
    assert version == 2 and entry_count("intents") == 3


@pytest.mark.django_db
def test_export_to_stdout_carries_extra_meta_fields_and_import_counts_no_write(
    fake: Any, workload: Workload, redis_db: Any, tmp_path: Path
) -> None:
    from respcache import services, stats

    policy = selectors.workload_policy("intents")
    result = services.cached_message_create(policy=policy, body=ask(), raw_body=orjson.dumps(ask()))
    raw = keys.entry_key(workload="intents", version=1, fingerprint=result.fingerprint or "")
    meta_key = store.full_key(keys.meta_key(raw))
    redis_db.hset(meta_key, mapping={"summary": "system: be brief | user: password reset", "xm": "bucket"})
    out = StringIO()
    call_command("respcache_export", "intents", stdout=out, stderr=StringIO())
    path = tmp_path / "stdout.jsonl"
    path.write_text(out.getvalue())
    (entry,) = [orjson.loads(line) for line in out.getvalue().splitlines()][1:-1]
    assert entry["meta"]["summary"] == "system: be brief | user: password reset"
    assert "xm" not in entry["meta"] and entry["fingerprint"] == result.fingerprint

    assert stats.totals("intents", "1h")["written"] == 1
    call_command("respcache_purge", "intents", stdout=StringIO())
    run_import("intents", str(path))
    meta = redis_db.hgetall(meta_key)
    assert meta[b"summary"] == b"system: be brief | user: password reset"
    assert meta[b"reads"] == b"0" and b"xm" not in meta
    assert int(meta[b"size"]) == len(redis_db.get(store.full_key(raw)))
    assert stats.totals("intents", "1h")["written"] == 1  # an import is not a write of fresh answers


def _exported(fake: Any, tmp_path: Path, texts: tuple[str, ...] = ("a", "b", "c")) -> Path:
    policy = selectors.workload_policy("intents")
    from respcache import services

    for text in texts:
        services.cached_message_create(policy=policy, body=ask(text), raw_body=orjson.dumps(ask(text)))
    path = tmp_path / "export.jsonl"
    call_command("respcache_export", "intents", "-o", str(path), stderr=StringIO())
    call_command("respcache_purge", "intents", stdout=StringIO())
    return path


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: b.rindex(b"\n", 0, -1) - 20], r"line 4: not JSON"),  # cut inside the last entry
        (lambda b: b[: b.rindex(b"\n", 0, -1) + 1], r"line 4: the file ends without its end line"),
        (lambda b: b.replace(b'"fingerprint":"', b'"fingerprint":"x', 1), r"line 2: fingerprint must be"),
        (lambda b: b.replace(b"\n", b"\nnot json\n", 2).replace(b"\nnot json\n", b"\n", 1), r"line 3: not JSON"),
        (lambda b: b"{}\n" + b, r"line 1: not an export header"),
        (lambda b: b + b"{}\n", r"line 6: a line after the end line"),
        (lambda b: b.replace(b'"entries":3', b'"entries":4'), r"line 5: the end line counts 4"),
        (lambda b: b"", r"line 1: the file is empty"),
    ],
    ids=["cut-mid-line", "no-end-line", "bad-fingerprint", "garbage-line", "no-header", "after-end", "count", "empty"],
)
def test_a_truncated_or_malformed_file_is_refused_by_line_and_imports_nothing(
    fake: Any, workload: Workload, tmp_path: Path, damage: Any, message: str
) -> None:
    path = _exported(fake, tmp_path)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CommandError, match=message + ".*nothing was imported"):
        run_import("intents", str(damaged))
    assert entry_count("intents") == 0
    assert run_import("intents", str(path)) == "imported 3 entries into intents\n"  # the whole file is fine


@pytest.mark.django_db
def test_ttl_left_is_kept_and_ttl_overrides_it(fake: Any, make_workload: Any, tmp_path: Path, redis_db: Any) -> None:
    make_workload("intents", ttl_seconds=1000)
    path = _exported(fake, tmp_path, ("a",))
    (entry,) = [orjson.loads(line) for line in path.read_bytes().splitlines()][1:-1]
    raw = store.full_key(keys.entry_key(workload="intents", version=1, fingerprint=entry["fingerprint"]))
    run_import("intents", str(path))
    assert 990_000 < redis_db.pttl(raw) <= entry["ttl_ms"] <= 1_000_000
    assert redis_db.pttl(store.full_key(keys.meta_key(raw.removeprefix(store.full_key(""))))) > 990_000
    run_import("intents", str(path), "--ttl", "60")
    assert 50_000 < redis_db.pttl(raw) <= 60_000
    with pytest.raises(CommandError, match="--ttl"):
        run_import("intents", str(path), "--ttl", "0")


@pytest.mark.django_db
def test_skip_existing_keeps_present_entries_and_overwrite_is_the_default(
    fake: Any, workload: Workload, tmp_path: Path, redis_db: Any
) -> None:
    path = _exported(fake, tmp_path, ("a", "b"))
    lines = path.read_bytes().splitlines()
    first = orjson.loads(lines[1])
    raw = store.full_key(keys.entry_key(workload="intents", version=1, fingerprint=first["fingerprint"]))
    redis_db.set(raw, b"other", px=5000)
    assert run_import("intents", str(path), "--skip-existing") == (
        "imported 1 entries into intents, skipped 1 already present\n"
    )
    assert redis_db.get(raw) == b"other"
    run_import("intents", str(path))
    assert store.decode_record(redis_db.get(raw)).message == first["answer"].encode()


@pytest.mark.django_db
def test_unknown_workload_and_missing_file_are_command_errors(workload: Workload, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="unknown workload"):
        call_command("respcache_export", "nope", stdout=StringIO())
    with pytest.raises(CommandError, match="unknown workload"):
        run_import("nope", str(tmp_path / "x"))
    with pytest.raises(CommandError, match="cannot read"):
        run_import("intents", str(tmp_path / "missing.jsonl"))


@pytest.mark.django_db
def test_simulated_answers_are_not_imported_as_real_ones(workload: Workload, tmp_path: Path, settings: Any) -> None:
    policy = selectors.workload_policy("intents")
    from respcache import services

    services.cached_message_create(policy=policy, body=ask(), raw_body=orjson.dumps(ask()))  # simulated
    path = tmp_path / "sim.jsonl"
    call_command("respcache_export", "intents", "-o", str(path), stderr=StringIO())
    assert orjson.loads(path.read_bytes().splitlines()[0])["upstream"] == "simulated"
    settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": "anthropic"}
    with pytest.raises(CommandError, match="line 1: the entries are 'simulated' answers"):
        run_import("intents", str(path))


@pytest.mark.django_db(transaction=True)
def test_export_to_a_real_stdout_and_import_from_stdin(fake: Any, workload: Workload, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from django.conf import settings as django_settings

    from tests.test_deploy import database_url

    path = _exported(fake, tmp_path, ("a", "b"))
    run_import("intents", str(path))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "REDIS_URL": django_settings.CACHES["respcache"]["LOCATION"],
        "DATABASE_URL": database_url(),
        "RESPCACHE_TEST_UPSTREAM": "anthropic",
    }
    manage = [sys.executable, "manage.py"]
    base = Path(__file__).resolve().parent.parent
    done = subprocess.run([*manage, "respcache_export", "intents"], cwd=base, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr

    def entries(data: bytes) -> list[dict[str, Any]]:  # without the TTL left, which runs down
        found = [orjson.loads(line) for line in data.splitlines()[1:]]
        return sorted(({k: v for k, v in e.items() if k != "ttl_ms"} for e in found), key=str)

    assert entries(done.stdout) == entries(path.read_bytes())
    assert b"exported 2 entries of intents" in done.stderr
    Workload.objects.create(slug="copy")
    loaded = subprocess.run(
        [*manage, "respcache_import", "copy", "-"],
        cwd=base,
        env=env,
        input=done.stdout,
        capture_output=True,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout == b"imported 2 entries into copy\n" and entry_count("copy") == 2
