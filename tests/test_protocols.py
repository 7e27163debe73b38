"""The API surfaces (captures/protocols) on event sequences shaped exactly as the SDKs define
them: each event is validated against the `openai` or `anthropic` package's own typed model and
serialized by it, then fed to the event scanner the capture and the replay share."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from anthropic.types import (
    Message,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseIncompleteEvent,
    ResponseOutputItemAddedEvent,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseRefusalDeltaEvent,
    ResponseTextDeltaEvent,
)
from pydantic import BaseModel

from captures import protocols as P
from captures.protocols.base import Answer, split_events

# -- building events as the SDKs type them --------------------------------------------------------


def data(model: BaseModel) -> bytes:
    return b"data: " + model.model_dump_json().encode() + b"\n\n"


def named(model: BaseModel) -> bytes:
    return f"event: {model.type}\n".encode() + data(model)  # type: ignore[attr-defined]


def scan(surface: P.Surface, events: list[bytes]) -> P.EventScanner:
    s = P.EventScanner(surface)
    for i, ev in enumerate(events):
        s.feed(ev, i)
    s.finish(len(events))
    return s


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    obj = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": choices,
        **extra,
    }
    return data(ChatCompletionChunk.model_validate(obj))


DONE = b"data: [DONE]\n\n"
USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 7,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def test_chat_text_stream() -> None:
    s = scan(
        P.CHAT,
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
            chunk(None, usage=USAGE),
            DONE,
        ],
    )
    assert (s.first_output, s.first_text, s.output_times) == (1, 1, [1, 2])
    assert (s.text_events, s.reasoning_events, s.tool_events) == (2, 0, 0)
    f = s.fields
    assert (f.finish_reason, f.prompt_tokens, f.completion_tokens) == ("stop", 11, 7)
    assert (f.cached_tokens, f.reasoning_tokens, f.response_id) == (4, 2, "chatcmpl-1")
    assert s.complete and s.error is None


def test_chat_tool_call_stream_has_ttft_and_itl_without_content() -> None:
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    s = scan(
        P.CHAT,
        [
            chunk({"role": "assistant", "content": None}),
            chunk({"tool_calls": [call]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk({}, "tool_calls"),
            DONE,
        ],
    )
    assert s.first_output == 1 and s.first_text is None
    assert s.tool_events == 3 and s.output_times == [1, 2, 3]
    assert s.fields.finish_reason == "tool_calls" and s.complete


def test_chat_reasoning_refusal_and_legacy_function_call() -> None:
    # reasoning_content (DeepSeek, vLLM) and reasoning (OpenRouter, LiteLLM): extra delta fields
    s = scan(
        P.CHAT,
        [
            chunk({"role": "assistant"}),
            chunk({"reasoning_content": "think"}),
            chunk({"reasoning": "more"}),
            chunk({"content": "answer"}),
            chunk({}, "stop"),
            DONE,
        ],
    )
    assert (s.first_output, s.first_text, s.reasoning_events, s.text_events) == (1, 3, 2, 1)
    s = scan(P.CHAT, [chunk({"refusal": "I can't"}), chunk({}, "stop"), DONE])
    assert s.first_text == 0 and s.text_events == 1
    fc = {"function_call": {"name": "f", "arguments": "{}"}}
    s = scan(P.CHAT, [chunk(fc), chunk({}, "function_call"), DONE])
    assert s.tool_events == 1 and s.fields.finish_reason == "function_call"


def test_chat_nulls_and_spaces_are_not_tokens() -> None:
    """LiteLLM sends every field (null where unused); Python servers put spaces after colons."""
    nulls = chunk({"content": None, "role": "assistant", "tool_calls": None, "refusal": None})
    spaced = b'data: {"choices": [{"delta": {"content": "x"}, "finish_reason": null}], "usage": null}\n\n'
    s = scan(P.CHAT, [nulls, spaced, DONE])
    assert s.text_events == 1 and s.first_output == 1 and s.fields.finish_reason is None


def test_chat_error_event_mid_stream() -> None:
    err = b'data: {"error": {"message": "upstream overloaded", "type": "overloaded"}}\n\n'
    s = scan(P.CHAT, [chunk({"content": "a"}), err])
    assert s.error == "upstream overloaded" and not s.complete
    # "error" as a word in text is not an error event
    s = scan(P.CHAT, [chunk({"content": 'no "error" here'}), chunk({}, "stop"), DONE])
    assert s.error is None and s.complete


def test_legacy_completions_stream() -> None:
    def comp(text: str, finish: str | None = None, usage: Any = None) -> bytes:
        obj = {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "m",
            "choices": [
                {"index": 0, "text": text, "finish_reason": finish or "stop", "logprobs": None}
            ],
        }
        m = Completion.model_validate(obj)
        raw = json.loads(m.model_dump_json())
        raw["choices"][0]["finish_reason"] = finish  # streamed chunks carry null until the end
        if usage:
            raw["usage"] = usage
        return b"data: " + json.dumps(raw).encode() + b"\n\n"

    s = scan(
        P.COMPLETIONS,
        [
            comp("a"),
            comp("b"),
            comp("", "length", {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
            DONE,
        ],
    )
    assert (s.first_output, s.text_events, s.fields.finish_reason) == (0, 2, "length")
    assert s.fields.completion_tokens == 2 and s.complete


def response(status: str, **more: Any) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1.0,
        "model": "m",
        "status": status,
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": None,
        "temperature": None,
        "top_p": None,
        **more,
    }


RESPONSES_USAGE = {
    "input_tokens": 20,
    "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
    "output_tokens": 9,
    "output_tokens_details": {"reasoning_tokens": 3},
    "total_tokens": 29,
}


def test_responses_stream_text_reasoning_and_function_call() -> None:
    ids = {"item_id": "it", "output_index": 0}
    events = [
        named(
            ResponseCreatedEvent(
                type="response.created", sequence_number=0, response=response("in_progress")
            )
        ),
        named(
            ResponseReasoningSummaryTextDeltaEvent(
                type="response.reasoning_summary_text.delta",
                delta="hm",
                summary_index=0,
                sequence_number=1,
                **ids,
            )
        ),
        named(
            ResponseTextDeltaEvent(
                type="response.output_text.delta",
                delta="Hi",
                content_index=0,
                logprobs=[],
                sequence_number=2,
                **ids,
            )
        ),
        named(
            ResponseTextDeltaEvent(
                type="response.output_text.delta",
                delta="",
                content_index=0,
                logprobs=[],
                sequence_number=3,
                **ids,
            )
        ),
        named(
            ResponseOutputItemAddedEvent.model_validate(
                {
                    "type": "response.output_item.added",
                    "output_index": 1,
                    "sequence_number": 4,
                    "item": {
                        "type": "function_call",
                        "id": "fc",
                        "call_id": "call_9",
                        "name": "f",
                        "arguments": "",
                        "status": "in_progress",
                    },
                }
            )
        ),
        named(
            ResponseFunctionCallArgumentsDeltaEvent(
                type="response.function_call_arguments.delta", delta="{}", sequence_number=5, **ids
            )
        ),
        named(
            ResponseCompletedEvent(
                type="response.completed",
                sequence_number=6,
                response=response("completed", usage=RESPONSES_USAGE),
            )
        ),
    ]
    s = scan(P.RESPONSES, events)
    assert (s.first_output, s.first_text) == (1, 2)
    assert (s.reasoning_events, s.text_events, s.tool_events) == (1, 1, 2)  # the empty delta is not
    f = s.fields
    assert (f.prompt_tokens, f.completion_tokens, f.cached_tokens, f.reasoning_tokens) == (
        20,
        9,
        8,
        3,
    )
    assert (f.finish_reason, f.response_id) == ("completed", "resp_1") and s.complete
    # the type from the data alone, without event: lines (some gateways drop them)
    s = scan(P.RESPONSES, [e.split(b"\n", 1)[1] for e in events])
    assert (s.first_output, s.first_text, s.output_events, s.complete) == (1, 2, 4, True)


def test_responses_incomplete_failed_and_error() -> None:
    inc = response(
        "incomplete", incomplete_details={"reason": "max_output_tokens"}, usage=RESPONSES_USAGE
    )
    s = scan(
        P.RESPONSES,
        [
            named(
                ResponseIncompleteEvent(type="response.incomplete", sequence_number=1, response=inc)
            )
        ],
    )
    assert s.fields.finish_reason == "max_output_tokens" and s.complete and s.error is None
    failed = response("failed", error={"code": "server_error", "message": "model crashed"})
    s = scan(
        P.RESPONSES,
        [named(ResponseFailedEvent(type="response.failed", sequence_number=1, response=failed))],
    )
    assert s.error == "model crashed" and s.fields.finish_reason == "failed"
    refusal = ResponseRefusalDeltaEvent(
        type="response.refusal.delta",
        delta="no",
        item_id="i",
        output_index=0,
        content_index=0,
        sequence_number=0,
    )
    err = ResponseErrorEvent(
        type="error", code="rate_limit", message="slow down", param=None, sequence_number=1
    )
    s = scan(P.RESPONSES, [named(refusal), named(err)])
    assert s.text_events == 1 and s.error == "slow down" and not s.complete
    # LiteLLM's error on a Responses stream is chat-shaped, then [DONE]
    litellm = b'data: {"error": {"message": "Error processing stream start", "type": "internal_server_error", "param": null, "code": "500"}}\n\n'
    s = scan(P.RESPONSES, [litellm, DONE])
    assert s.error == "Error processing stream start" and not s.complete


def test_responses_whole_body() -> None:
    body = response(
        "completed",
        usage=RESPONSES_USAGE,
        output=[
            {
                "type": "message",
                "id": "m",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "hello", "annotations": []}],
            }
        ],
    )
    seen = P.read_response(P.RESPONSES, [json.dumps(body).encode()], "application/json", None)
    assert seen.fields.shape_ok and seen.fields.completion_tokens == 9
    assert P.RESPONSES.output_text(body) == "hello"


def anthropic_message(**more: Any) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 1,
            "cache_creation_input_tokens": 5,
            "cache_read_input_tokens": 20,
        },
        **more,
    }


def test_anthropic_stream_thinking_text_tool_use_and_usage() -> None:
    def delta(i: int, d: dict[str, Any]) -> bytes:
        return named(
            RawContentBlockDeltaEvent.model_validate(
                {"type": "content_block_delta", "index": i, "delta": d}
            )
        )

    def start(i: int, block: dict[str, Any]) -> bytes:
        return named(
            RawContentBlockStartEvent.model_validate(
                {"type": "content_block_start", "index": i, "content_block": block}
            )
        )

    def stop(i: int) -> bytes:
        return named(RawContentBlockStopEvent(type="content_block_stop", index=i))

    events = [
        named(
            RawMessageStartEvent.model_validate(
                {"type": "message_start", "message": anthropic_message()}
            )
        ),
        b'event: ping\ndata: {"type": "ping"}\n\n',
        start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        delta(0, {"type": "thinking_delta", "thinking": "let me see"}),
        delta(0, {"type": "signature_delta", "signature": "EqQB"}),
        stop(0),
        start(1, {"type": "text", "text": ""}),
        delta(1, {"type": "text_delta", "text": "It is"}),
        delta(1, {"type": "text_delta", "text": ""}),
        stop(1),
        start(2, {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}),
        delta(2, {"type": "input_json_delta", "partial_json": '{"city":"Paris"}'}),
        stop(2),
        named(
            RawMessageDeltaEvent.model_validate(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                    "usage": {"output_tokens": 42},
                }
            )
        ),
        named(RawMessageStopEvent(type="message_stop")),
    ]
    s = scan(P.MESSAGES, events)
    assert (s.first_output, s.first_text) == (3, 7)
    assert (s.reasoning_events, s.text_events, s.tool_events) == (1, 1, 2)
    f = s.fields
    assert (f.finish_reason, f.completion_tokens, f.response_id) == ("tool_use", 42, "msg_1")
    assert (f.prompt_tokens, f.cached_tokens, f.cache_write_tokens) == (35, 20, 5)
    assert s.complete and s.error is None
    # without event: lines, types come from the data, whatever the key order
    s = scan(P.MESSAGES, [e.split(b"\n", 1)[1] for e in events])
    assert (s.first_output, s.first_text, s.output_events, s.complete) == (3, 7, 4, True)


def test_anthropic_error_event_and_whole_body() -> None:
    err = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    s = scan(P.MESSAGES, [err])
    assert s.error == "Overloaded" and not s.complete
    msg = Message.model_validate(
        anthropic_message(content=[{"type": "text", "text": "hi"}], stop_reason="end_turn")
    )
    seen = P.read_response(P.MESSAGES, [msg.model_dump_json().encode()], "application/json", None)
    assert seen.fields.shape_ok and seen.fields.finish_reason == "end_turn"
    assert P.MESSAGES.output_text(json.loads(msg.model_dump_json())) == "hi"


def test_embeddings_body() -> None:
    obj = CreateEmbeddingResponse.model_validate(
        {
            "object": "list",
            "model": "e",
            "usage": {"prompt_tokens": 6, "total_tokens": 6},
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        }
    )
    seen = P.read_response(P.EMBEDDINGS, [obj.model_dump_json().encode()], "application/json", None)
    assert seen.fields.shape_ok and seen.fields.prompt_tokens == 6 and not seen.streamed


# -- recognising surfaces, reading requests, editing them --------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "anthropic", "want"),
    [
        ("/v1/chat/completions", None, False, "chat"),
        ("/openai/deployments/gpt4/chat/completions?api-version=2024", None, False, "chat"),
        ("/v1/completions", None, False, "completions"),
        ("/v1/responses", None, False, "responses"),
        ("/v1/responses/resp_1", None, False, "http"),
        ("/v1/messages", None, False, "messages"),
        ("/v1/messages/count_tokens", None, False, "http"),
        ("/v1/embeddings", None, False, "embeddings"),
        ("/v1/models", None, False, "http"),
        ("/llm/chat", {"model": "m", "messages": []}, False, "chat"),
        ("/llm/chat", {"model": "m", "messages": [], "max_tokens": 9}, True, "messages"),
        ("/llm/gen", {"model": "m", "input": "x", "instructions": "be brief"}, False, "responses"),
        ("/llm/gen", {"model": "m", "prompt": "x"}, False, "completions"),
        ("/llm/gen", {"foo": 1}, False, "http"),
    ],
)
def test_detect(path: str, body: Any, anthropic: bool, want: str) -> None:
    assert P.detect(path, body, anthropic=anthropic).name == want


def test_request_fields_under_each_spelling() -> None:
    chat = {
        "model": "m",
        "max_completion_tokens": 50,
        "user": "u1",
        "stream": True,
        "messages": [
            {"role": "system", "content": "abc"},
            {"role": "user", "content": [{"type": "text", "text": "de"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    f = P.CHAT.request(chat)
    assert (f.max_tokens, f.prompt_chars, f.message_count, f.user, f.tools) == (50, 5, 2, "u1", 1)
    resp = {
        "model": "m",
        "input": [{"role": "user", "content": "hey"}],
        "instructions": "ab",
        "max_output_tokens": 7,
        "safety_identifier": "u2",
    }
    f = P.RESPONSES.request(resp)
    assert (f.max_tokens, f.prompt_chars, f.user) == (7, 5, "u2")
    msg = {
        "model": "c",
        "max_tokens": 9,
        "system": [{"type": "text", "text": "sys"}],
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"user_id": "u3"},
    }
    f = P.MESSAGES.request(msg)
    assert (f.max_tokens, f.prompt_chars, f.user) == (9, 5, "u3")
    f = P.EMBEDDINGS.request({"model": "e", "input": ["ab", "cde"]})
    assert (f.prompt_chars, f.message_count, f.stream) == (5, 2, False)


def test_salt_and_copy_user_where_each_api_keeps_them() -> None:
    chat = {
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        "user": "u",
    }
    assert P.CHAT.salt(chat, "x1") and chat["messages"][1]["content"] == "[x1] q"
    assert P.CHAT.copy_user(chat, 2) and chat["user"] == "u~c2"
    r = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "q"}]}]}
    assert P.RESPONSES.salt(r, "x2") and r["input"][0]["content"][0]["text"] == "[x2] q"
    r2 = {"input": "q"}
    assert P.RESPONSES.salt(r2, "x3") and r2["input"] == "[x3] q"
    m = {"messages": [{"role": "user", "content": "q"}], "metadata": {"user_id": "u"}}
    assert P.MESSAGES.salt(m, "x4") and P.MESSAGES.copy_user(m, 1)
    assert m["messages"][0]["content"] == "[x4] q" and m["metadata"]["user_id"] == "u~c1"
    c = {"prompt": ["a", "b"]}
    assert P.COMPLETIONS.salt(c, "x5") and c["prompt"][0] == "[x5] a"
    e = {"input": "doc"}
    assert P.EMBEDDINGS.salt(e, "x6") and e["input"] == "[x6] doc"
    assert not P.PLAIN.salt({"prompt": "p"}, "x")


@pytest.mark.parametrize("surface", [P.CHAT, P.COMPLETIONS, P.RESPONSES, P.MESSAGES])
def test_rendered_answers_read_back_as_they_were_made(surface: P.Surface) -> None:
    """What the mock renders (every kind of output) the scanner reads back exactly."""
    tool = None if surface is P.COMPLETIONS else "f"
    a = Answer(
        rid="r",
        model="m",
        created=0,
        text=[" a", " b"],
        reasoning=[] if surface is P.COMPLETIONS else [" t"],
        tool_name=tool,
        tool_args=['{"x"', ":1}"] if tool else [],
        tool_call_id="call_1",
        prompt_tokens=5,
    )
    events = [e for _, e in surface.render_stream(a)]
    timed = [i for i, (t, _) in enumerate(surface.render_stream(a)) if t]
    s = scan(surface, events)
    assert s.output_times == timed  # the mock's timed events are exactly the output events
    assert s.complete and s.fields.completion_tokens == a.completion_tokens
    body = P.read_response(surface, [surface.render_body(a)], "application/json", None).fields
    assert body.shape_ok and body.completion_tokens == a.completion_tokens


# -- bad input: classified as what it is, never a crash --------------------------------------------


def test_mixed_surfaces_truncation_and_junk_are_counted_not_fatal() -> None:
    anthropic_delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}\n\n'
    s = scan(P.CHAT, [chunk({"content": "a"}), anthropic_delta, b"data: {not json\n\n"])
    assert s.events == 3 and s.text_events == 1 and not s.complete  # the foreign event is other
    s = scan(P.RESPONSES, [chunk({"content": "a"}), chunk({}, "stop"), DONE])
    assert s.output_events == 0 and not s.complete  # chat chunks are nothing to Responses
    s = scan(P.MESSAGES, [b"event: message_delta\ndata: {broken\n\n"])
    assert s.events == 1 and s.fields.finish_reason is None
    for surface in P.SURFACES:
        bad = P.read_response(surface, [b'{"foo": 1}'], "application/json", None).fields
        assert bad.shape_ok is False, surface.name
        nope = P.read_response(surface, [b"<html>oops</html>"], "application/json", None).fields
        assert nope.shape_ok is False, surface.name


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from([*P.SURFACES, P.PLAIN]))
def test_any_bytes_scan_without_raising(blob: bytes, surface: P.Surface) -> None:
    s = P.EventScanner(surface)
    s.feed(blob, 0)
    s.finish(1)
    P.read_response(surface, [blob], "text/event-stream", None)
    P.read_response(surface, [blob], "application/json", "gzip")


CHAT_STREAM = b"".join(
    [
        chunk({"role": "assistant"}),
        *(chunk({"content": f"w{i}"}) for i in range(6)),
        chunk({}, "stop"),
        chunk(None, usage=USAGE),
        DONE,
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(CHAT_STREAM) - 1), max_size=40))
def test_chunk_boundaries_do_not_change_what_is_read(cuts: list[int]) -> None:
    """However the network splits the stream (CRLF too), the events and fields are the same."""
    for raw in (CHAT_STREAM, CHAT_STREAM.replace(b"\n", b"\r\n")):
        edges = sorted({0, *(c for c in cuts if c < len(raw)), len(raw)})
        s = P.EventScanner(P.CHAT)
        for a, b in itertools.pairwise(edges):
            s.feed(raw[a:b], a)
        s.finish(len(raw))
        assert (s.events, s.text_events, s.complete) == (10, 6, True)
        assert (s.fields.completion_tokens, s.fields.finish_reason) == (7, "stop")
    assert len(split_events(CHAT_STREAM)) == 10
