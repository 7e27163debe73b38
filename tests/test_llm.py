"""OpenAI-style field parsing from request and response bodies."""

from __future__ import annotations

import gzip
import json

from captures import llm


def test_request_fields_chat() -> None:
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "max_completion_tokens": 77,
            "user": "u-1",
            "messages": [
                {"role": "system", "content": "abc"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hello"}, {"type": "image_url"}],
                },
            ],
        }
    ).encode()
    f = llm.parse_request(body)
    assert (f.model, f.stream, f.max_tokens, f.message_count, f.prompt_chars, f.user) == (
        "gpt-4o-mini",
        True,
        77,
        2,
        8,
        "u-1",
    )


def test_request_fields_gzip_and_completions() -> None:
    body = gzip.compress(json.dumps({"model": "m", "prompt": "abcd", "max_tokens": 3}).encode())
    f = llm.parse_request(body, "gzip")
    assert (f.model, f.prompt_chars, f.max_tokens, f.message_count) == ("m", 4, 3, None)


def test_non_json_and_garbage_give_nulls() -> None:
    for body, enc in [
        (b"", None),
        (b"\x00\x01", None),
        (b"[1,2]", None),
        (b"{bad", None),
        (b"xx", "gzip"),
        (b"{}", "br"),
    ]:
        f = llm.parse_request(body, enc)
        assert f.model is None and f.message_count is None
    assert llm.parse_request(json.dumps({"max_tokens": True}).encode()).max_tokens is None


def test_response_json_and_sse() -> None:
    plain = llm.chat_completion(
        "r", "m", 0, "hi", finish_reason="stop", prompt_tokens=4, completion_tokens=2
    )
    f = llm.parse_response(plain, "application/json")
    assert (f.finish_reason, f.prompt_tokens, f.completion_tokens) == ("stop", 4, 2)
    sse = b"".join(
        [
            b": keep-alive comment\n\n",
            llm.chat_chunk("r", "m", 0, role="assistant", content=""),
            llm.chat_chunk("r", "m", 0, content="a"),
            llm.chat_chunk("r", "m", 0, content="b"),
            llm.chat_chunk("r", "m", 0, finish_reason="length"),
            llm.chat_chunk(
                "r", "m", 0, empty_choices=True, usage={"prompt_tokens": 9, "completion_tokens": 2}
            ),
            b"data: {broken\n\n",
            llm.SSE_DONE,
        ]
    )
    f = llm.parse_response(sse, "text/event-stream; charset=utf-8")
    assert (f.finish_reason, f.prompt_tokens, f.completion_tokens) == ("length", 9, 2)


def test_long_stream_is_parsed_from_its_tail() -> None:
    events = [llm.chat_chunk("r", "m", 0, content=f"tok{i} " * 5) for i in range(2000)]
    events.append(llm.chat_chunk("r", "m", 0, finish_reason="stop"))
    events.append(
        llm.chat_chunk(
            "r", "m", 0, empty_choices=True, usage={"prompt_tokens": 3, "completion_tokens": 2000}
        )
    )
    body = b"".join(events) + llm.SSE_DONE
    assert len(body) > 20 * llm.SSE_TAIL
    f = llm.parse_response(body, "text/event-stream")
    assert (f.finish_reason, f.prompt_tokens, f.completion_tokens) == ("stop", 3, 2000)


def test_sse_multiline_data_and_crlf() -> None:
    text = 'data: {"a":\r\ndata: 1}\r\n\r\ndata: [DONE]\r\n\r\n'
    assert list(llm.iter_sse_data(text)) == ['{"a":\n1}', "[DONE]"]
