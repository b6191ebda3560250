"""The bench's upstream: tests/fake_anthropic.py, answers of a chosen size, and a call counter.

Run as ``python -m bench.upstream``: it prints its base URL on the first line of stdout and
serves until stdin closes (so it never outlives the bench). On top of the test fake:

- ``[[answer_bytes:N]]`` in the last user text pads the answer's text with words until the
  Message JSON is about N bytes (text compresses like prose, not like one repeated letter);
- ``GET /_calls`` answers ``{"messages": <POST /v1/messages calls so far>}``.
"""

from __future__ import annotations

import json
import random
import sys
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests import fake_anthropic
from tests.fake_anthropic import FakeAnthropic, directives

WORDS = (
    "the request answer cache model token prompt user system message reply classify intent ticket "
    "account password reset billing refund order shipping delay question support agent route label "
    "extract field value date amount invoice customer product issue error login email address "
    "phone "
    "priority high low medium urgent escalate resolve close open pending review summary detail and "
    "or with for from into about after before because while which that this those these will would "
    "could should must may can not only also very more most less least first last next previous"
).split()

_make_message = fake_anthropic.make_message


def sized_message(body: dict[str, Any], shape: str = "text") -> dict[str, Any]:
    message = _make_message(body, shape)
    wanted = int(directives(body).get("answer_bytes", "0") or 0)
    if wanted and message["content"] and message["content"][-1].get("type") == "text":
        block = message["content"][-1]
        words = random.Random(block["text"]).choices(WORDS, k=wanted // 4)
        padding, size, used = [], len(json.dumps(message)), 0
        while size + used < wanted and words:
            word = words.pop()
            padding.append(word)
            used += len(word) + 1
        block["text"] += " " + " ".join(padding)
    return message


# The test fake's handler looks make_message up in its module at each call; the bench's own
# process swaps in the sized version there (the suite's fake is untouched).
fake_anthropic.make_message = sized_message


class BenchUpstream(FakeAnthropic):
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        base: Any = super()._handler()
        fake = self

        class Handler(base):  # type: ignore[misc, valid-type]
            # Headers and body go out in two writes: without TCP_NODELAY the body waits for
            # the client's delayed ACK (~40 ms a call on Linux), which would swamp the miss path.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                if self.path == "/_calls":
                    self._send_json(200, {"messages": len(fake.message_calls())})
                else:
                    self._send_json(
                        404,
                        {
                            "type": "error",
                            "error": {"type": "not_found_error", "message": self.path},
                        },
                    )

        return Handler


def main() -> None:
    server = BenchUpstream().start()
    print(server.url, flush=True)
    stopped = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stopped.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stopped.wait()
    server.stop()


if __name__ == "__main__":
    main()
