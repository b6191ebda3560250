"""Entry records in a real Redis: schema versioning, compression, TTL, lookup accounting."""

from __future__ import annotations

import fnmatch
import os
import pathlib
import time
import tomllib
import zlib
from typing import Any

import lz4.block
import orjson
import pytest

from respcache import keys, stats, store, tally
from respcache.store import connection, fields, records


def names(slug: str = "w", version: int = 1, fp: str = "f" * 64) -> dict[str, str]:
    raw = keys.entry_key(workload=slug, version=version, fingerprint=fp)
    return {
        "key": store.full_key(raw),
        "meta": store.full_key(keys.meta_key(raw)),
        "lock": store.full_key(keys.lock_key(raw)),
        "channel": store.full_key(keys.channel_name(raw)),
        # Every key of the write script in the entry's slot (an empty name has a slot of its own).
        "notes": store.full_key(keys.notes_key(raw)),
    }


def write(message: bytes = b'{"type":"message"}', *, ttl: int = 60, now: float | None = None, **kw: Any) -> None:
    now = time.time() if now is None else now
    store.write(
        **names(**kw),
        token="",
        record=store.encode_record(message, stored_at=now, model="m"),
        ttl_seconds=ttl,
        input_tokens=11,
        output_tokens=7,
        stored_at=now,
        model="m",
        expiry_buckets=stats.expiry_bucket_keys(kw.get("slug", "w"), now, ttl)[0],
    )


def test_a_write_without_notes_touches_only_the_entry_meta_and_lock(redis_db: Any) -> None:
    """No notes key: the script gets three keys, all in the entry's slot (an empty key name
    would be a slot of its own on a cluster)."""
    n = names()
    n.pop("notes", None)
    now = time.time()
    store.write(
        **n,
        token="",
        record=store.encode_record(b"{}", stored_at=now, model="m"),
        ttl_seconds=60,
        input_tokens=1,
        output_tokens=1,
        stored_at=now,
        model="m",
        expiry_buckets=stats.expiry_bucket_keys("w", now, 60)[0],
    )
    assert lookup().entry is not None


def lookup(outcome: str = "hit", version: int = 1) -> store.Lookup:
    return store.lookup(workload="w", db_version=version, fingerprint="f" * 64, mark_read=bool(outcome))


def test_record_round_trip_small_is_not_compressed() -> None:
    message = b'{"type":"message","content":[]}'
    raw = store.encode_record(message, stored_at=123.5, model="m")
    assert raw[:3] == b"RC\x01" and raw[3] == 0
    entry = store.decode_record(raw)
    assert entry == store.Entry(message=message, stored_at=123.5, model="m")


def test_large_record_is_lz4_compressed_and_round_trips() -> None:
    message = orjson.dumps({"type": "message", "content": [{"type": "text", "text": "same words " * 500}]})
    raw = store.encode_record(message, stored_at=1.0, model="m")
    assert raw[3] == store.FLAG_LZ4
    assert len(raw) < len(message) / 3
    assert store.decode_record(raw).message == message  # type: ignore[union-attr]


def test_zlib_compressor_and_records_of_either_codec_stay_readable(settings: Any) -> None:
    message = orjson.dumps({"type": "message", "content": [{"type": "text", "text": "same words " * 500}]})
    lz4_record = store.encode_record(message, stored_at=1.0, model="m")
    settings.RESPCACHE = {**settings.RESPCACHE, "COMPRESSOR": "zlib"}
    zlib_record = store.encode_record(message, stored_at=2.0, model="m")
    assert zlib_record[3] == store.FLAG_ZLIB and zlib_record[4:] == zlib.compress(
        zlib.decompress(zlib_record[4:]), settings.RESPCACHE.get("COMPRESS_LEVEL", 6)
    )
    for raw, stored_at in ((lz4_record, 1.0), (zlib_record, 2.0)):
        assert store.decode_record(raw) == store.Entry(message=message, stored_at=stored_at, model="m")


def test_incompressible_record_is_stored_plain() -> None:
    """Compression that would not shrink the record is skipped (LZ4 has no entropy coding:
    random hex does not shrink)."""
    message = orjson.dumps({"text": os.urandom(2048).hex()})
    raw = store.encode_record(message, stored_at=1.0, model="m")
    assert raw[3] == 0
    assert store.decode_record(raw).message == message  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"garbage",
        b"RC\x02\x00" + b'{"stored_at":1}\n{}',  # a newer schema
        b"RC\x00\x00" + b'{"stored_at":1}\n{}',  # an older one
        b"RC\x01\x01" + b"not zlib",
        b"RC\x01\x00" + b"no newline",
        b"RC\x01\x00" + b'{"nope":1}\n{}',
        b"RC\x01\x01" + zlib.compress(b"[1]\n{}"),
        b"RC\x01\x02" + b"not lz4 at all",
        b"RC\x01\x02" + b"\xff\xff\xff\x7f" + b"declares 2 GiB",
        b"RC\x01\x02" + b"\x01",
        b"RC\x01\x02" + lz4.block.compress(b"[1]\n{}"),
        b"\x80\x04\x95pickle",
    ],
)
def test_unreadable_records_are_misses_not_crashes(raw: bytes | None) -> None:
    assert store.decode_record(raw) is None


def test_write_sets_ttl_and_meta_and_lookup_marks_the_read(redis_db: Any) -> None:
    write(ttl=120)
    n = names()
    assert 119_000 < redis_db.pttl(n["key"]) <= 120_000
    assert 119_000 < redis_db.pttl(n["meta"]) <= 120_000
    meta = redis_db.hgetall(n["meta"])
    assert meta[b"reads"] == b"0" and meta[b"in"] == b"11" and meta[b"out"] == b"7"
    found = lookup()
    assert found.version == 1 and found.entry is not None
    assert redis_db.hget(n["meta"], "reads") == b"1"
    assert (found.input_tokens, found.output_tokens) == (11, 7)
    assert stats.totals("w", "5m").requests == 0  # the store counts nothing: the call does (tally.py)


def test_counted_buckets_expire_with_their_retention_and_totals_never(redis_db: Any) -> None:
    """Counts reach Redis in the process's flush (tally.py): a bucket it creates expires when its
    retention ends, and the all-time totals never."""
    now = time.time()
    bkeys, bttls = stats.bucket_keys("w", now)
    for _ in range(3):
        stats.count("w", now, hit=1)
    assert redis_db.hget(bkeys[0], "hit") is None  # not yet: in the process
    assert tally.flush() is True
    for key, ttl in zip(bkeys, bttls, strict=True):
        assert redis_db.hget(key, "hit") == b"3"
        assert 0 < redis_db.ttl(key) <= ttl
    assert redis_db.ttl(store.totals_key("w")) == -1
    assert tally.pending() == {}


def test_a_lookup_that_only_marks_a_read_returns_the_tokens_and_the_first_read(redis_db: Any) -> None:
    write()
    marked = store.lookup(workload="w", db_version=1, fingerprint="f" * 64, mark_read=True, fetch=False)
    assert marked.entry is None and marked.raw_size == 0  # not read back
    assert (marked.input_tokens, marked.output_tokens) == (11, 7)
    assert redis_db.hget(names()["meta"], "reads") == b"1"
    assert list(marked.first_read_buckets) == [k.decode() for k in redis_db.hmget(names()["meta"], "xm", "xh")]
    again = store.lookup(workload="w", db_version=1, fingerprint="f" * 64, mark_read=True, fetch=False)
    assert again.first_read_buckets == () and redis_db.hget(names()["meta"], "reads") == b"2"


def test_an_old_schema_entry_in_redis_is_a_miss(redis_db: Any) -> None:
    redis_db.set(names()["key"], b"RC\x00\x00whatever")
    assert lookup().entry is None


def test_lookup_with_empty_outcome_counts_nothing(redis_db: Any) -> None:
    write()
    assert lookup("").entry is not None
    assert redis_db.hget(names()["meta"], "reads") == b"0"
    assert stats.totals("w", "5m")["hit"] == 0


def test_version_in_redis_wins_over_an_older_database_copy(redis_db: Any) -> None:
    write(version=3)
    store.set_version("w", 3)
    found = lookup(version=1)  # a worker whose local policy copy still says 1
    assert found.version == 3 and found.entry is not None
    store.set_version("w", 2)  # never lowered
    assert lookup(version=1).version == 3


def test_database_version_raises_a_lost_redis_version(redis_db: Any) -> None:
    assert lookup(version=5).version == 5
    assert redis_db.get(connection.lookup_version_key("w", "f" * 64)) == b"5"  # the group's copy, on a cluster


def test_purge_deletes_all_versions_of_one_workload_only(redis_db: Any) -> None:
    write(version=1)
    write(version=2, fp="a" * 64)
    write(slug="other")
    assert store.purge("w") == 2
    assert redis_db.exists(names()["key"]) == 0
    assert redis_db.exists(names(slug="other")["key"]) == 1
    assert redis_db.exists(names()["meta"]) == 0


def test_iter_entry_keys_scans(redis_db: Any) -> None:
    for i in range(30):
        write(fp=f"{i:064d}")
    found = list(store.iter_entry_keys(keys.entry_pattern(workload="w", version=1), count=7))
    assert len(found) == 30


def test_a_changed_key_prefix_or_retention_reaches_the_memoised_keys(settings: Any) -> None:
    """The hit path's memos (a workload's keys, the second's bucket keys) follow CACHES and
    RESPCACHE changes, as the alias prefix does."""
    now = time.time()
    assert connection.workload_keys("w")[0].startswith("rctest:")
    assert stats.bucket_keys("w", now)[0][0].startswith("rctest:")
    settings.CACHES = {**settings.CACHES, "respcache": {**settings.CACHES["respcache"], "KEY_PREFIX": "moved"}}
    assert all(key.startswith("moved:") for key in connection.workload_keys("w"))
    assert all(key.startswith("moved:") for key in stats.bucket_keys("w", now)[0])
    ttl = stats.bucket_keys("w", now)[1][0]
    settings.RESPCACHE = {**settings.RESPCACHE, "MINUTE_BUCKET_RETENTION_SECONDS": 10}
    assert stats.bucket_keys("w", now)[1][0] < ttl


def test_lz4_declared_size_over_the_limit_is_not_decoded(monkeypatch: Any) -> None:
    def boom(*a: Any, **k: Any) -> bytes:
        raise MemoryError("decoded a damaged size")

    monkeypatch.setattr(records.lz4.block, "decompress", boom)
    raw = b"RC\x01\x02" + (store.MAX_DECODED_BYTES + 1).to_bytes(4, "little") + b"x" * 8
    assert store.decode_record(raw) is None


# --- the Lua scripts: files loaded once, every field name passed in ---------------------------

SCRIPTS = pathlib.Path(store.__file__).parent / "scripts"


def test_scripts_are_the_lua_files_registered_once_and_dropped_on_a_settings_change(settings: Any) -> None:
    lookup_script = store.script("lookup")
    assert lookup_script.script == (SCRIPTS / "lookup.lua").read_text()
    assert store.script("lookup") is lookup_script
    settings.CACHES = {**settings.CACHES}  # a new client may come with it: register again
    assert store.script("lookup") is not lookup_script
    assert sorted(p.name for p in SCRIPTS.iterdir()) == [
        "budget.lua",
        "extend.lua",
        "lookup.lua",
        "lookup_ro.lua",
        "release.lua",
        "set_version.lua",
        "takeover.lua",
        "write.lua",
    ]


def test_no_script_knows_a_field_name() -> None:
    names = {value for name, value in vars(fields).items() if name.isupper() and isinstance(value, str)}
    names |= set(stats.FIELDS) | set(stats.TOTAL_FIELDS)
    assert {"reads", "first_read", "exp_read", "written", "saved_in", "in", "xm"} <= names  # the premise
    for path in SCRIPTS.glob("*.lua"):
        code = "\n".join(line.split("--")[0] for line in path.read_text().splitlines())  # comments may name them
        assert [n for n in names if f"'{n}'" in code or f'"{n}"' in code] == [], path.name


def test_the_counters_the_scripts_write_are_ones_stats_reads() -> None:
    counters = {fields.WRITTEN, fields.SAVED_IN, fields.SAVED_OUT, fields.EXP_WRITTEN, fields.EXP_READ}
    assert counters <= set(stats.FIELDS)
    assert fields.FIRST_READ in stats.TOTAL_FIELDS
    assert set(fields.META_FIELDS) <= set(fields.WRITE_FIELDS)


def test_the_scripts_use_the_field_names_python_hands_them(redis_db: Any, monkeypatch: Any) -> None:
    """Renamed in Python, a meta field is renamed in Redis: the scripts take every name from ARGV."""
    renamed = {name: f"x_{name}" for name in ("reads", "in", "out", "xm", "xh")}
    monkeypatch.setattr(fields, "WRITE_FIELDS", tuple(renamed.get(n, n) for n in fields.WRITE_FIELDS))
    monkeypatch.setattr(fields, "LOOKUP_FIELDS", tuple(renamed.get(n, n) for n in fields.LOOKUP_FIELDS))
    write()
    found = lookup()
    assert found.entry is not None and (found.input_tokens, found.output_tokens) == (11, 7)
    assert len(found.first_read_buckets) == 2
    meta = redis_db.hgetall(names()["meta"])
    assert (meta[b"x_reads"], meta[b"x_in"], meta[b"x_out"]) == (b"1", b"11", b"7")
    assert not {b"reads", b"in", b"out", b"xm", b"xh"} & set(meta)


def test_the_scripts_ship_in_the_package() -> None:
    """pyproject's package-data lists them: a wheel without them would fail its first lookup."""
    project = tomllib.loads((pathlib.Path(store.__file__).parents[2] / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["respcache"]
    package = pathlib.Path(store.__file__).parents[1]
    for path in SCRIPTS.glob("*.lua"):
        assert any(fnmatch.fnmatch(str(path.relative_to(package)), p) for p in patterns), path.name


def test_a_full_redis_still_serves_hits_and_the_caller_counts_them(redis_db: Any) -> None:
    """maxmemory reached under noeviction: Redis refuses the lookup's counting, so the lookup
    reads without writing (lookup_ro.lua) and says the read was not counted."""
    if store.clustered():
        pytest.skip("fills one Redis through CONFIG SET: not a cluster's nodes")
    record = store.encode_record(b'{"full":1}', stored_at=time.time(), model="m")
    redis_db.set(store.full_key(keys.entry_key(workload="intents", version=1, fingerprint="abc")), record)
    old = redis_db.config_get("maxmemory*")
    used = int(redis_db.info("memory")["used_memory"])
    redis_db.config_set("maxmemory-policy", "noeviction")
    redis_db.config_set("maxmemory", max(1, used - 1_000_000))
    try:
        found = store.lookup(workload="intents", db_version=1, fingerprint="abc", mark_read=True)
        missing = store.lookup(workload="intents", db_version=1, fingerprint="nope", mark_read=True)
    finally:
        redis_db.config_set("maxmemory", old["maxmemory"])
        redis_db.config_set("maxmemory-policy", old["maxmemory-policy"])
    assert found.entry is not None and found.entry.message == b'{"full":1}'
    assert found.counted is False and missing.entry is None
    assert (
        redis_db.hget(
            store.full_key(keys.meta_key(keys.entry_key(workload="intents", version=1, fingerprint="abc"))), "reads"
        )
        is None
    )


def test_once_redis_is_known_down_touches_fail_at_once_and_a_probe_finds_it_back(settings: Any) -> None:
    """The first touch that cannot reach Redis opens the breaker; the next ones raise without
    trying; when the back-off has passed a background PING finds Redis back and closes it."""
    from respcache.exceptions import CacheUnavailable
    from tests.conftest import redis_down

    real_caches = settings.CACHES
    settings.CACHES = redis_down(real_caches)
    opened = store.breaker.opened
    with pytest.raises(CacheUnavailable):
        store.ping()
    assert store.breaker.state == "open"
    with pytest.raises(CacheUnavailable, match="marked down"):
        store.ping()
    assert store.breaker.opened == opened + 1
    settings.CACHES = real_caches  # Redis "answers again" (a settings change also resets it)
    store.breaker.failure()
    store.breaker._retry_at = 0.0  # the back-off has passed
    with pytest.raises(CacheUnavailable, match="marked down"):
        store.ping()  # this call still skips Redis; it starts the probe
    deadline = time.monotonic() + 5
    while store.breaker.state != "closed" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.breaker.state == "closed"
    store.ping()
