"""Peak memory for the worst bodies of the maximum size (issue 12): what one call costs the
process at the body limits (MAX_BODY_BYTES, MAX_JSON_VALUES, MAX_JSON_DEPTH), against a 1 KB call.

Each body is handled by the service's WSGI app in a fresh process (``python -m bench.limits``),
which reads it from a file as it would from a socket. The measure is the process's resident
high-water mark (``VmHWM``) during that one call, reset after a warm-up call (Linux ``clear_refs``):
not ``ru_maxrss``, which a child inherits from the bench process at exec, and not tracemalloc,
which misses most of orjson's allocations. ``--quick`` scales the bodies by 1/16.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.report import Row

PATH = "/w/{workload}/v1/messages"
HEAD = b'{"model":"claude-bench-1","max_tokens":10,"messages":[{"role":"user","content":"limits"}]'
BASELINE = "1 KB request"
CASES = {
    "values": "peak memory: largest body of most values (refused, 400)",
    "deep": "peak memory: deepest tool_result content (refused, 400)",
    "text": "peak memory: largest body, one text string (accepted)",
}


def values_body(size: int) -> bytes:
    """``size`` bytes at most of as many JSON values as fit: an unknown field of zeros."""
    count = (size - len(HEAD) - len(b',"x":[]}') + 1) // 2
    return HEAD + b',"x":[' + b",".join([b"0"] * count) + b"]}"


def deep_body(levels: int) -> bytes:
    """A message whose tool_result content nests ``levels`` levels (the message itself is level 1)."""
    inner = b"[" * (levels - 5) + b"]" * (
        levels - 5
    )  # inside the message, its content, the block, its content, the text block
    block = b'{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"t","x":' + inner + b"}]}"
    message = b'{"role":"user","content":[' + block + b"]}"
    return b'{"model":"claude-bench-1","max_tokens":10,"messages":[' + message + b"]}"


def text_body(size: int) -> bytes:
    """A body of ``size`` bytes whose one user message is a single string."""
    empty = orjson.dumps({"model": "claude-bench-1", "max_tokens": 10, "messages": [{"role": "user", "content": ""}]})
    text = "a" * (size - len(empty))
    return orjson.dumps({"model": "claude-bench-1", "max_tokens": 10, "messages": [{"role": "user", "content": text}]})


def add_rows(bench: Any) -> None:
    from bench.__main__ import QUICK, TICKET, WORKLOAD, ask, say
    from respcache.conf import app_settings

    scale = 16 if bench.plan == QUICK else 1
    size = app_settings.MAX_BODY_BYTES // scale - 1024
    depth = int(app_settings.MAX_JSON_DEPTH)
    bodies = {
        "values": (values_body(size), 400),
        "deep": (deep_body(depth + 1), 400),
        "text": (text_body(size), 200),
    }
    baseline_body = orjson.dumps(ask(f"[[answer_bytes:1000]] limits {TICKET}"))
    path = PATH.format(workload=WORKLOAD)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(dir=bench.h.dir) as tmp:
        for name, (body, _) in [("baseline", (baseline_body, 200)), *bodies.items()]:
            say(f"peak memory, {name} body of {len(body):,} bytes, in a fresh process")
            (Path(tmp) / name).write_bytes(body)
            results[name] = measure(path, bench.api_key, Path(tmp) / "baseline", Path(tmp) / name)
            results[name]["bytes"] = len(body)
    base = results["baseline"]
    if base["status"] != 200:
        raise RuntimeError(f"the 1 KB request was answered {base['status']}")
    bench.rows.append(Row("peak memory: 1 KB request (process high-water)", mb(base["peak"]), "MB"))
    for name, (_, expected) in bodies.items():
        got = results[name]
        if got["status"] != expected:
            raise RuntimeError(f"the {name} body ({got['bytes']:,} bytes) was answered {got['status']}, not {expected}")
        bench.rows.append(Row.compare(CASES[name], mb(got["peak"]), "MB", mb(base["peak"]), BASELINE))
    bench.raw["limits"] = {"scale": 1 / scale, "max_json_depth": depth, **results}


def mb(kilobytes: int) -> float:
    return round(kilobytes / 1024, 1)


def measure(path: str, api_key: str, warmup: Path, body: Path) -> dict[str, Any]:
    """Run one body through the app in a fresh process; its status, resident set before the call
    and high-water mark during it (kB)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.limits", path, api_key, str(warmup), str(body)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {body.name} measurement failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def call(app: Any, path: str, api_key: str, body: Path) -> tuple[int, str]:
    """One POST of the file ``body`` through the WSGI ``app``: its status and X-Respcache."""
    seen: list[tuple[str, list[tuple[str, str]]]] = []
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "CONTENT_LENGTH": str(body.stat().st_size),
        "CONTENT_TYPE": "application/json",
        "HTTP_X_API_KEY": api_key,
        "HTTP_ANTHROPIC_VERSION": "2023-06-01",
    }
    with open(body, "rb") as stream:
        result = app(
            {**environ, "wsgi.input": stream}, lambda status, headers, exc_info=None: seen.append((status, headers))
        )
        b"".join(result)
        result.close()
    status, headers = seen[-1]
    return int(status.split()[0]), dict((k.lower(), v) for k, v in headers).get("x-respcache", "")


def child(path: str, api_key: str, warmup: Path, body: Path) -> None:
    import logging

    import django

    django.setup()
    logging.disable(logging.CRITICAL)  # the call log would write to this process's stdout
    from django.core.handlers.wsgi import WSGIHandler

    app = WSGIHandler()
    for _ in range(2):  # imports, connections and local caches are not the body's cost
        call(app, path, api_key, warmup)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the high-water mark to the resident set now
    before = status_kb("VmRSS")
    status, cache = call(app, path, api_key, body)
    peak = status_kb("VmHWM")
    print(json.dumps({"status": status, "x-respcache": cache, "rss_before": before, "peak": peak}))


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
