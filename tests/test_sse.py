"""SSE replay, parsing and assembly, checked against the official SDK's own stream accumulator."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message

from respcache import sse
from tests.fake_anthropic import SHAPES, make_message, sse_events

BODY = {"model": "claude-test-1", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}

EXTRA_MESSAGES: dict[str, dict[str, Any]] = {
    "citations": {
        "content": [
            {
                "type": "text",
                "text": "Paris is the capital.",
                "citations": [
                    {
                        "type": "char_location",
                        "cited_text": "Paris",
                        "document_index": 0,
                        "document_title": None,
                        "start_char_index": 0,
                        "end_char_index": 5,
                    },
                ],
            }
        ]
    },
    "server_tool": {
        "content": [
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "weather"}},
            {
                "type": "web_search_tool_result",
                "tool_use_id": "srvtoolu_1",
                "content": [
                    {
                        "type": "web_search_result",
                        "url": "https://x.test",
                        "title": "X",
                        "encrypted_content": "abc",
                        "page_age": None,
                    }
                ],
            },
            {"type": "text", "text": "Sunny.", "citations": None},
        ]
    },
    "redacted_thinking": {
        "content": [
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Done.", "citations": None},
        ]
    },
    "empty_tool_input": {
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}],
        "stop_reason": "tool_use",
    },
    "empty_text_and_usage_extras": {
        "content": [{"type": "text", "text": "", "citations": None}],
        "usage": {
            "input_tokens": 3,
            "output_tokens": 1,
            "cache_creation_input_tokens": 2,
            "cache_read_input_tokens": 7,
            "service_tier": "standard",
            "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0},
        },
        "stop_details": None,
        "container": {"id": "container_1", "expires_at": "2030-01-01T00:00:00Z"},
    },
}


def messages() -> list[tuple[str, dict[str, Any]]]:
    out = [(shape, make_message(BODY, shape)) for shape in SHAPES]
    for name, fields in EXTRA_MESSAGES.items():
        out.append((name, {**make_message(BODY), **fields}))
    return out


MESSAGES = messages()
IDS = [name for name, _ in MESSAGES]


def sdk_final(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The Message the official SDK accumulates from these events (what get_final_message returns)."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for _, data in events:
        if data["type"] == "ping":
            continue
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    return Message.model_validate(snapshot.model_dump()).model_dump()


def parse_stream(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(event, orjson.loads(data)) for event, data in sse.EventParser().feed(raw)]


@pytest.mark.parametrize(("name", "message"), MESSAGES, ids=IDS)
def test_replay_gives_the_sdk_the_same_message_as_a_non_streaming_call(name: str, message: dict[str, Any]) -> None:
    events = parse_stream(sse.replay(orjson.dumps(message)))
    assert sdk_final(events) == Message.model_validate(message).model_dump()


@pytest.mark.parametrize(("name", "message"), MESSAGES, ids=IDS)
def test_replay_then_assembly_gives_back_the_stored_message(name: str, message: dict[str, Any]) -> None:
    assembler = sse.MessageAssembler()
    for event, data in sse.EventParser().feed(sse.replay(orjson.dumps(message))):
        assembler.feed(event, data)
    assert assembler.complete and assembler.storable
    assert assembler.result() == message


@pytest.mark.parametrize("shape", SHAPES)
def test_assembling_the_upstreams_events_gives_its_non_streaming_message(shape: str) -> None:
    message = make_message(BODY, shape)
    raw = b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in sse_events(message))
    assembler = sse.MessageAssembler()
    for event, data in sse.EventParser().feed(raw):
        assembler.feed(event, data)
    assert assembler.complete and assembler.storable
    assert assembler.result() == message
    assert sdk_final(parse_stream(raw)) == Message.model_validate(assembler.result()).model_dump()


def test_replay_event_sequence_is_the_documented_one() -> None:
    message = make_message(BODY, "thinking")
    message["content"].append(make_message(BODY, "tool_use")["content"][1])
    kinds = []
    for event, data in parse_stream(sse.replay(orjson.dumps(message))):
        assert event == data["type"]
        kinds.append(data["delta"]["type"] if event == "content_block_delta" else event)
    assert kinds == [
        "message_start",
        "content_block_start",
        "thinking_delta",
        "signature_delta",
        "content_block_stop",
        "content_block_start",
        "text_delta",
        "content_block_stop",
        "content_block_start",
        "input_json_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    events = parse_stream(sse.replay(orjson.dumps(message)))
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == message["usage"]["input_tokens"]
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == message["usage"]["output_tokens"]


def test_parser_handles_any_split_and_any_line_ending() -> None:
    message = make_message(BODY, "tool_use")
    raw = sse.replay(orjson.dumps(message))
    expected = sse.EventParser().feed(raw)
    assert len(expected) == 9
    for ending in (b"\n", b"\r\n", b"\r"):
        wire = b": a comment\n" + raw.replace(b"\n", ending)
        for cut in range(0, len(wire), 7):
            parser = sse.EventParser()
            got = parser.feed(wire[:cut]) + parser.feed(wire[cut:]) + parser.close()
            assert got == expected, (ending, cut)


def test_parser_joins_multi_line_data() -> None:
    assert sse.EventParser().feed(b"event: x\ndata: {\ndata: }\n\n") == [("x", b"{\n}")]


def test_error_event_stops_the_stream_from_completing() -> None:
    message = make_message(BODY)
    assembler = sse.MessageAssembler()
    for name, data in list(sse_events(message))[:3]:
        assembler.add(name, data)
    assembler.feed("error", sse.error_event("overloaded_error", "Overloaded").split(b"data: ", 1)[1].strip())
    assembler.add("message_stop", {"type": "message_stop"})
    assert not assembler.complete
    assert assembler.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert sse.ERROR_STATUS[assembler.error["type"]] == 529


def test_truncated_stream_is_not_complete() -> None:
    assembler = sse.MessageAssembler()
    for name, data in list(sse_events(make_message(BODY)))[:-1]:
        assembler.add(name, data)
    assert not assembler.complete


@pytest.mark.parametrize(
    "bad",
    [
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "future_delta"}}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 5, "delta": {"type": "text_delta", "text": "x"}},
        ),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x"}}),
    ],
)
def test_an_event_it_cannot_apply_makes_the_stream_unstorable(bad: tuple[str, dict[str, Any]]) -> None:
    assembler = sse.MessageAssembler()
    for name, data in sse_events(make_message(BODY)):
        if name == "message_stop":
            assembler.feed(bad[0], orjson.dumps(bad[1]))
        assembler.feed(name, orjson.dumps(data))
    assert assembler.complete
    assert not assembler.storable


def test_data_that_is_not_json_makes_the_stream_unstorable() -> None:
    assembler = sse.MessageAssembler()
    assembler.feed("message_start", b"{not json")
    assert not assembler.storable


def test_unknown_event_types_and_pings_are_ignored() -> None:
    message = make_message(BODY, "multi")
    assembler = sse.MessageAssembler()
    for name, data in sse_events(message):
        assembler.add(name, data)
        assembler.add("future_event", {"type": "future_event"})
    assert assembler.complete and assembler.storable
    assert assembler.result() == message


def test_sdk_message_type_is_what_replays_are_checked_against() -> None:
    # The SDK in use still parses every shape above (a newer SDK must not silently drop one).
    for _, message in MESSAGES:
        assert isinstance(Message.model_validate(message), anthropic.types.Message)
