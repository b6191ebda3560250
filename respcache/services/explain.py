"""The miss explainer and entry summaries: pure functions over a request, its answer and the
recent requests of its shape (``store.recent_requests``).

"Shape" (``keys.request_shape``): the endpoint and the number and roles of the messages. A
miss is ``new`` when no live stored request of the same workload, key version and shape exists,
or when the closest one equals it in no field; otherwise it ``differs`` in the fields of the
closest one (the most fields equal, then the fewest differing; the newest among ties) whose fingerprints are not equal.
Each miss is counted under one reason (``reason``): the first of model, system, tools,
max_tokens, other (any other top-level field) and messages in which it differs, so a changed
configuration shows before changed input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from respcache.stats import MISS_REASONS
from respcache.store import IndexItem

#: Characters kept of each part of a summary.
SUMMARY_CHARS = 200
#: Recent requests a shape index keeps (and the explainer compares against).
INDEX_KEEP = 32

NEW = "new"
#: The reasons a miss is counted under, in the order a miss that differs in several is named.
REASONS = MISS_REASONS
_MESSAGE = re.compile(r"messages\[(\d+)\]")


@dataclass(frozen=True)
class Explanation:
    """Why a request missed: ``differs`` is empty for a new request."""

    differs: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """The one reason this miss is counted under (see REASONS)."""
        if not self.differs:
            return NEW
        kinds = {_kind(name) for name in self.differs}
        return next(r for r in REASONS[1:] if r in kinds)

    @property
    def header(self) -> str:
        """The ``X-Respcache-Miss`` value: ``new`` or ``differs=<field>[,<field>…]``."""
        return NEW if not self.differs else "differs=" + ",".join(self.differs)


def _kind(name: str) -> str:
    if _MESSAGE.fullmatch(name):
        return "messages"
    return name if name in REASONS else "other"


def _order(name: str) -> tuple[str, int]:
    match = _MESSAGE.fullmatch(name)
    return ("messages", int(match.group(1))) if match else (name, -1)


def explain(
    fields: dict[str, str], candidates: Iterable[IndexItem], *, fingerprint: str, live_after: float
) -> Explanation:
    """Compare a request's ``fields`` with the candidates stored after ``live_after`` (older ones
    have expired), leaving out the request's own entry (``fingerprint``: another caller may have
    just stored it)."""
    best: tuple[int, int, tuple[str, ...]] | None = None
    for item in candidates:
        if item.stored_at < live_after or fingerprint.startswith(item.fingerprint):
            continue
        names = set(fields) | set(item.fields)
        differs = tuple(sorted((n for n in names if fields.get(n) != item.fields.get(n)), key=_order))
        equal = len(names) - len(differs)
        if best is None or (equal, -len(differs)) > best[:2]:
            best = (equal, -len(differs), differs)
    if best is None or best[0] == 0:
        return Explanation()
    return Explanation(differs=best[2])


# --- summaries --------------------------------------------------------------------------------


def _cap(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_result":
            parts.append(_text_of(block.get("content")) or "[tool_result]")
        else:
            parts.append(f"[{block.get('type')}]")
    return " ".join(parts)


def _first_line(message: bytes) -> str:
    try:
        answer = orjson.loads(message)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(answer, dict):
        return ""
    if "input_tokens" in answer and "content" not in answer:  # count_tokens
        return f"input_tokens: {answer['input_tokens']}"
    for block in answer.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            lines = [line for line in str(block.get("text", "")).splitlines() if line.strip()]
            if lines:
                return lines[0]
        elif block.get("type") == "tool_use":
            return f"[tool_use {block.get('name', '')}]"
    return ""


def summarise(body: dict[str, Any], message: bytes) -> dict[str, str]:
    """What an entry answers, in short: the start of the system prompt (``system``), of the last
    user turn (``user``) and the first line of the answer (``answer``), each capped at
    SUMMARY_CHARS characters (white space collapsed)."""
    last_user = ""
    messages = body.get("messages")
    if isinstance(messages, list):
        for item in reversed(messages):
            if isinstance(item, dict) and item.get("role") == "user":
                last_user = _text_of(item.get("content"))
                break
    return {"system": _cap(_text_of(body.get("system"))), "user": _cap(last_user), "answer": _cap(_first_line(message))}
