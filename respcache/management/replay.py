"""respcache_replay's runner: a JSON Lines file of Messages API bodies, sent through the cache in
this process by N threads, with progress and a summary.

Each line is read, parsed and validated as the call endpoint does it (``api.parsers`` and the
view's field checks), so replay refuses what the API refuses; a bad line is reported by its
number and skipped. A good one goes through ``cached_message_create``, the service the endpoint
calls. ``"stream": true`` lines are sent without ``stream`` (the key ignores it): replay wants the
answer, not its events. Threads are daemons: on Ctrl-C the calls in flight are abandoned (a
stored entry is one atomic write, an abandoned lock expires after ``lock_ttl``).
"""

from __future__ import annotations

import queue
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from respcache.api.parsers import parse_message_body
from respcache.api.views import validate_message_fields
from respcache.conf import DEFAULT_MODEL_PRICES, app_settings
from respcache.exceptions import InvalidRequest, RespcacheError
from respcache.selectors import Policy
from respcache.services import cached_message_create

OUTCOMES = ("hit", "miss", "wait", "fallthrough", "bypass", "refresh")
SAVING = ("hit", "wait")
_DATED = re.compile(r"-(\d{8}|latest)$")


def model_price(model: str) -> tuple[float, float] | None:
    """(input, output) USD per million tokens of ``model``, or None when no price is known."""
    table = {**DEFAULT_MODEL_PRICES, **app_settings.MODEL_PRICES}
    for name in (model, _DATED.sub("", model)):
        price = table.get(name)
        if price is not None:
            return float(price["input"]), float(price["output"])
    return None


@dataclass
class Summary:
    """What a replay did so far."""

    total: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[int, str]] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    #: Tokens saved (input, output) per requested model.
    saved: dict[str, list[int]] = field(default_factory=dict)
    streamed: int = 0
    interrupted: bool = False
    abandoned: int = 0

    @property
    def done(self) -> int:
        return sum(self.outcomes.values()) + len(self.errors) + len(self.bad_lines)

    def cost(self) -> tuple[float | None, list[str]]:
        """The estimated cost saved over priced models (None if no saved token has a price),
        and the models whose savings have no price."""
        cost, unpriced = 0.0, []
        priced = False
        for model, (saved_in, saved_out) in sorted(self.saved.items()):
            price = model_price(model)
            if price is None:
                unpriced.append(model)
                continue
            priced = True
            cost += (saved_in * price[0] + saved_out * price[1]) / 1_000_000
        return (cost if priced or not unpriced else None), unpriced

    def as_dict(self) -> dict[str, Any]:
        cost, unpriced = self.cost()
        return {
            "lines": self.total,
            "done": self.done,
            **{name: self.outcomes[name] for name in OUTCOMES},
            "errors": len(self.errors),
            "bad_lines": len(self.bad_lines),
            "saved_in": sum(s[0] for s in self.saved.values()),
            "saved_out": sum(s[1] for s in self.saved.values()),
            "cost_saved_usd": None if cost is None else round(cost, 6),
            "cost_unknown_models": unpriced,
            "streamed_as_json": self.streamed,
            "interrupted": self.interrupted,
            "abandoned": self.abandoned,
            "error_lines": [{"line": n, "error": e} for n, e in self.errors],
            "bad": [{"line": n, "error": e} for n, e in self.bad_lines],
        }

    def text(self) -> list[str]:
        cost, unpriced = self.cost()
        o = self.outcomes
        head = "interrupted: " if self.interrupted else ""
        lines = [
            f"{head}replayed {self.done} of {self.total} lines: {o['hit']} hits, {o['miss']} misses, "
            f"{o['wait']} waits, {o['fallthrough']} fallthrough, {o['bypass']} bypass, "
            f"{len(self.errors)} errors, {len(self.bad_lines)} bad lines",
            f"tokens saved: {sum(s[0] for s in self.saved.values())} input, "
            f"{sum(s[1] for s in self.saved.values())} output",
        ]
        unknown = f" (cost unknown for {', '.join(unpriced)}: no price)" if unpriced else ""
        lines.append(f"estimated cost saved: {'unknown' if cost is None else f'${cost:.4f}'}{unknown}")
        if self.streamed:
            lines.append(f"{self.streamed} streaming lines were replayed without streaming")
        if self.abandoned:
            lines.append(f"{self.abandoned} calls in flight were abandoned")
        return lines


@dataclass(frozen=True)
class Fed:
    """The feeder read every line: ``lines`` of them were not blank."""

    lines: int


@dataclass(frozen=True)
class Done:
    """One line's end: an outcome with the tokens it saved, an error, or a bad line."""

    number: int
    outcome: str = ""
    model: str = ""
    saved: tuple[int, int] = (0, 0)
    error: str = ""
    bad: str = ""


def prepare(raw: bytes) -> tuple[dict[str, Any], bytes, bool]:
    """The line's body and bytes as the endpoint would take them; InvalidRequest if it would
    refuse them. A streaming body is turned into a plain one (the third value says so)."""
    body = parse_message_body(raw.strip())
    validate_message_fields(body.data)
    if body.data.get("stream") is True:
        data = {k: v for k, v in body.data.items() if k != "stream"}
        return data, orjson.dumps(data), True
    return body.data, body.raw, False


def saved_tokens(result: Any) -> tuple[int, int]:
    if result.input_tokens is not None and result.output_tokens is not None:
        return int(result.input_tokens), int(result.output_tokens)
    usage = orjson.loads(result.body).get("usage") or {}
    tokens_in = sum(
        int(usage.get(k) or 0) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    )
    return tokens_in, int(usage.get("output_tokens") or 0)


def call(policy: Policy, number: int, body: dict[str, Any], raw: bytes) -> Done:
    model = str(body.get("model"))
    try:
        result = cached_message_create(policy=policy, body=body, raw_body=raw)
    except InvalidRequest as exc:
        return Done(number, bad=exc.message)
    except RespcacheError as exc:
        return Done(number, error=f"{exc.error_type}: {exc.message}")
    except Exception as exc:  # never lose a worker: the line is counted as an error
        return Done(number, error=f"{type(exc).__name__}: {exc}")
    saved = saved_tokens(result) if result.outcome in SAVING else (0, 0)
    return Done(number, outcome=result.outcome, model=model, saved=saved)


class Replay:
    """Feed ``lines`` to ``concurrency`` daemon threads; ``run`` collects what they did."""

    def __init__(self, policy: Policy, lines: Iterable[bytes], total: int, concurrency: int) -> None:
        self.policy = policy
        self.lines = lines
        self.summary = Summary(total=total)
        self.concurrency = concurrency
        self.stop = threading.Event()
        self.work: queue.Queue[tuple[int, dict[str, Any], bytes] | None] = queue.Queue(maxsize=2 * concurrency)
        #: Done lines; a call's line number when it starts; ``Fed`` when every line was read.
        self.results: queue.Queue[Done | int | Fed] = queue.Queue()
        #: Lines whose call started and has not been collected yet.
        self.in_flight: set[int] = set()

    def feed(self) -> None:
        lines = 0
        try:
            for number, raw in enumerate(self.lines, start=1):
                if self.stop.is_set():
                    break
                if raw.strip():
                    lines += 1
                    self.feed_line(number, raw)
        finally:  # whatever happens, the collector learns how many lines there were
            if not self.stop.is_set():
                for _ in range(self.concurrency):
                    self.work.put(None)
            self.results.put(Fed(lines))

    def feed_line(self, number: int, raw: bytes) -> None:
        try:
            body, data, streamed = prepare(raw)
        except InvalidRequest as exc:
            self.results.put(Done(number, bad=exc.message))
            return
        if streamed:
            self.summary.streamed += 1
        while not self.stop.is_set():
            try:
                self.work.put((number, body, data), timeout=0.1)
                return
            except queue.Full:
                continue

    def serve(self) -> None:
        while not self.stop.is_set():
            item = self.work.get()
            if item is None:
                break
            self.results.put(item[0])  # a call started (its line number)
            self.results.put(call(self.policy, *item))

    def record(self, done: Done, report: Callable[[str], None]) -> None:
        summary = self.summary
        if done.bad:
            summary.bad_lines.append((done.number, done.bad))
            report(f"line {done.number}: {done.bad} (skipped)")
        elif done.error:
            summary.errors.append((done.number, done.error))
            report(f"line {done.number}: {done.error}")
        else:
            summary.outcomes[done.outcome] += 1
            saved = summary.saved.setdefault(done.model, [0, 0])
            saved[0] += done.saved[0]
            saved[1] += done.saved[1]

    def drain(self, report: Callable[[str], None]) -> None:
        """Collect what finished before the stop without waiting for more."""
        while True:
            try:
                got = self.results.get_nowait()
            except queue.Empty:
                return
            if isinstance(got, int):
                self.in_flight.add(got)
            elif isinstance(got, Done):
                self.in_flight.discard(got.number)
                self.record(got, report)

    def run(self, report: Callable[[str], None], progress: Callable[[Summary], None]) -> Summary:
        """Replay until every line is done; on KeyboardInterrupt, stop and return the partial
        summary (``interrupted``, with the calls in flight ``abandoned``)."""
        threads = [threading.Thread(target=self.feed, daemon=True, name="respcache-replay-feed")]
        threads += [
            threading.Thread(target=self.serve, daemon=True, name=f"respcache-replay-{i}")
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        fed: int | None = None
        try:
            while fed is None or self.summary.done < fed:
                try:
                    got = self.results.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(got, Fed):
                    fed = self.summary.total = got.lines  # the file may have changed since counted
                    continue
                if isinstance(got, int):
                    self.in_flight.add(got)
                    continue
                self.in_flight.discard(got.number)
                self.record(got, report)
                progress(self.summary)
        except KeyboardInterrupt:
            self.stop.set()
            self.summary.interrupted = True
            self.drain(report)
            self.summary.abandoned = len(self.in_flight)
        return self.summary
