"""Conversations found from content (captures/conversations.py), the replay's session state
(replay/state.py: ids mapped, live history) and diff's verdicts, by tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from captures import protocols as P
from captures.conversations import Tracker
from captures.protocols.canonical import Msg, msg_hash
from replay.decide.diff import verdict
from replay.plan import Shot
from replay.planrows import Recorded, Request
from replay.rewrite import Rewriter
from replay.send.outcome import Outcome
from replay.state import SessionState
from replay.targets import parse_target

MS = 1_000_000


def ans(text: str, *tools: tuple[str, str]) -> Msg:
    return ("assistant", text, tuple(tools))


def chat(*msgs: tuple[str, str], system: str = "sys") -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "system", "content": system}]
        + [{"role": r, "content": c} for r, c in msgs],
    }


def test_chat_history_links_turns_and_measures_think_time() -> None:
    t = Tracker()
    a = t.see(P.CHAT, chat(("user", "q1")), ans("a1"), [], 0, 10 * MS)
    b = t.see(
        P.CHAT,
        chat(("user", "q1"), ("assistant", "a1"), ("user", "q2")),
        ans("a2"),
        [],
        50 * MS,
        60 * MS,
    )
    c = t.see(
        P.CHAT,
        chat(
            ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"), ("user", "q3")
        ),
        ans("a3"),
        [],
        90 * MS,
        99 * MS,
    )
    assert a and b and c
    assert a.conversation == b.conversation == c.conversation
    assert [a.turn, b.turn, c.turn] == [0, 1, 2]
    assert (a.think_ns, b.think_ns, c.think_ns) == (None, 40 * MS, 30 * MS)


def test_a_windowed_history_still_links() -> None:
    """A client that sends only its last few messages (no system prompt any more)."""
    t = Tracker()
    first = t.see(
        P.CHAT, chat(("user", "q1"), ("assistant", "a1"), ("user", "q2")), ans("a2"), [], 0, 1
    )
    window = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"},
            {"role": "user", "content": "q3"},
        ],
    }
    later = t.see(P.CHAT, window, ans("a3"), [], 5, 6)
    assert first and later and later.conversation == first.conversation


def test_same_opening_two_conversations_kept_apart_by_context() -> None:
    t = Tracker()
    x1 = t.see(P.CHAT, chat(("user", "hi"), system="A"), ans("hello"), [], 0, 1)
    y1 = t.see(P.CHAT, chat(("user", "hi"), system="B"), ans("hello"), [], 0, 1)
    x2 = t.see(
        P.CHAT,
        chat(("user", "hi"), ("assistant", "hello"), ("user", "more"), system="A"),
        ans("x"),
        [],
        2,
        3,
    )
    y2 = t.see(
        P.CHAT,
        chat(("user", "hi"), ("assistant", "hello"), ("user", "more"), system="B"),
        ans("y"),
        [],
        2,
        3,
    )
    assert x1 and y1 and x2 and y2
    assert x1.conversation != y1.conversation
    assert (x2.conversation, y2.conversation) == (x1.conversation, y1.conversation)


def test_formatting_and_ids_do_not_matter() -> None:
    """The SDK sends the assistant turn back in its own shape: content parts, nulls, ids."""
    t = Tracker()
    response = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "  the answer ",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"b": 1, "a": 2}'},
                        }
                    ],
                },
            }
        ]
    }
    seen = P.read_response(P.CHAT, [json.dumps(response).encode()], "application/json", None)
    assert seen.fields.minted == ["call_1"]
    first = t.see(P.CHAT, chat(("user", "q")), seen.fields.answer, seen.fields.minted, 0, 1)
    body = chat(("user", "q"))
    body["messages"] += [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "the answer"}],
            "refusal": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"a":2,"b":1}'},
                }
            ],
        },
        {"role": "user", "content": "next"},
    ]
    later = t.see(P.CHAT, body, ans("n"), [], 2, 3)
    assert first and later and later.conversation == first.conversation


def test_tool_results_and_previous_response_id_link_first() -> None:
    t = Tracker()
    call = t.see(P.CHAT, chat(("user", "weather?")), ans("", ("weather", "{}")), ["call_9"], 0, 1)
    body = {
        "model": "m",
        "messages": [{"role": "tool", "tool_call_id": "call_9", "content": "sun"}],
    }
    result = t.see(P.CHAT, body, ans("it is sunny"), [], 2, 3)
    assert call and result and result.conversation == call.conversation and result.turn == 1
    r1 = t.see(P.RESPONSES, {"model": "m", "input": "first"}, ans("one"), ["resp_1"], 0, 1)
    r2 = t.see(
        P.RESPONSES,
        {"model": "m", "input": "second", "previous_response_id": "resp_1"},
        ans("two"),
        ["resp_2"],
        2,
        3,
    )
    r3 = t.see(
        P.RESPONSES,
        {"model": "m", "input": "third", "previous_response_id": "resp_2"},
        ans("three"),
        ["resp_3"],
        4,
        5,
    )
    assert r1 and r2 and r3 and r1.conversation == r2.conversation == r3.conversation
    assert r3.turn == 2 and r1.conversation != call.conversation
    # a server-side conversation object: every request naming it is one conversation
    c1 = t.see(P.RESPONSES, {"input": "a", "conversation": "conv_7"}, ans("A"), ["resp_8"], 6, 7)
    c2 = t.see(P.RESPONSES, {"input": "b", "conversation": {"id": "conv_7"}}, ans("B"), [], 8, 9)
    other = t.see(P.RESPONSES, {"input": "b", "conversation": "conv_8"}, ans("B"), [], 8, 9)
    assert c1 and c2 and other and c1.conversation == c2.conversation != other.conversation
    assert c2.turn == 1 and c1.conversation != r1.conversation


def test_anthropic_tool_round() -> None:
    t = Tracker()
    q = {"model": "c", "max_tokens": 9, "messages": [{"role": "user", "content": "w?"}]}
    first = t.see(P.MESSAGES, q, ans("", ("weather", "{}")), ["toolu_1"], 0, 1)
    q2 = {
        "model": "c",
        "max_tokens": 9,
        "messages": [
            {"role": "user", "content": "w?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "snow"}],
            },
        ],
    }
    second = t.see(P.MESSAGES, q2, ans("snowing"), [], 2, 3)
    assert first and second and second.conversation == first.conversation


def test_unrelated_requests_and_plain_http() -> None:
    t = Tracker()
    a = t.see(P.CHAT, chat(("user", "one")), ans("x"), [], 0, 1)
    b = t.see(P.CHAT, chat(("user", "two")), ans("y"), [], 0, 1)
    assert a and b and a.conversation != b.conversation
    assert t.see(P.PLAIN, {"foo": 1}, None, [], 0, 1) is None
    assert t.see(P.CHAT, "not a dict", None, [], 0, 1) is None


def test_memory_is_bounded() -> None:
    t = Tracker(limit=50)
    for i in range(500):
        t.see(P.CHAT, chat(("user", f"q{i}")), ans(f"a{i}"), [f"call_{i}"], i, i + 1)
    assert len(t._convs) <= 50 and len(t._ids) <= 50 and len(t._pairs) <= 50


# -- the replay's session state -------------------------------------------------------------------


def shot(
    body: dict[str, Any],
    path: str,
    session: str,
    minted: tuple[str, ...],
    answer: str | None = None,
) -> tuple[Shot, Any]:
    req = Request(
        "POST", path, None, [("Content-Type", "application/json")], json.dumps(body).encode()
    )
    rec = Recorded(200, None, None, None, None, None, None, minted=minted, answer_hash=answer)
    s = Shot(0, 0, req, session=session, recorded=rec)
    return s, Rewriter(parse_target("http://127.0.0.1:9")).prepare(req)


def test_ids_the_target_minted_replace_the_recorded_ones() -> None:
    st = SessionState()
    s1, p1 = shot({"model": "m", "input": "q"}, "/v1/responses", "s", ("resp_old", "call_old"))
    assert st.apply(s1, p1) is p1  # nothing learnt yet: sent as it is
    st.learn(s1, Outcome(sent_ns=0, minted=["resp_new", "call_new"]))
    body = {
        "model": "m",
        "previous_response_id": "resp_old",
        "input": [{"type": "function_call_output", "call_id": "call_old", "output": "x"}],
    }
    s2, p2 = shot(body, "/v1/responses", "s", ())
    assert set(p2.refs) == {"resp_old", "call_old"}
    sent = json.loads(st.apply(s2, p2).body)
    assert sent["previous_response_id"] == "resp_new"
    assert sent["input"][0]["call_id"] == "call_new" and st.mapped == 1
    out = st.apply(s2, p2)
    assert out.raw.endswith(out.body) and f"Content-Length: {len(out.body)}".encode() in out.raw
    other, po = shot(body, "/v1/responses", "another session", ())
    assert st.apply(other, po) is po  # maps are per session (and so per target and copy)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "old answer"},
                    {"role": "user", "content": "more"},
                ],
            },
        ),
        (
            "/v1/responses",
            {
                "model": "m",
                "input": [
                    {"role": "user", "content": "q"},
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "old answer"}],
                    },
                    {"role": "user", "content": "more"},
                ],
            },
        ),
        (
            "/v1/messages",
            {
                "model": "c",
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": [{"type": "text", "text": "old answer"}]},
                    {"role": "user", "content": "more"},
                ],
            },
        ),
    ],
)
def test_live_history_puts_the_targets_answer_in_place(path: str, body: dict[str, Any]) -> None:
    st = SessionState(live_history=True)
    old = msg_hash(ans("old answer"))
    s1, _ = shot(
        {"model": "m", "messages": [{"role": "user", "content": "q"}]}, path, "s", (), answer=old
    )
    st.learn(s1, Outcome(sent_ns=0, answer=ans("what the target said")))
    s2, p2 = shot(body, path, "s", ())
    sent = st.apply(s2, p2)
    assert b"what the target said" in sent.body and b"old answer" not in sent.body
    assert st.replaced == 1


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ({}, {}, ("identical", [])),
        ({}, {"body": "other"}, ("equivalent", [])),  # a fresh id and timestamp: same answer
        ({}, {"answer": "a2"}, ("different", ["answer differs"])),
        ({}, {"status": "503", "answer": None}, ("different", ["status 200->503"])),
        (
            {},
            {"finish_reason": "length", "tokens": 3},
            ("different", ["finish_reason stop->length", "tokens 8->3"]),
        ),
        ({"answer": None}, {"answer": None, "body": "other"}, ("different", ["body differs"])),
    ],
)
def test_verdicts(a: dict[str, Any], b: dict[str, Any], want: tuple[str, list[str]]) -> None:
    base = {
        "status": "200",
        "finish_reason": "stop",
        "tokens": 8,
        "answer": "a1",
        "body": "h",
        "streamed": False,
    }
    assert verdict({**base, **a}, {**base, **b}) == want


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
def test_a_stream_ends_at_its_terminal_event_whatever_the_connection_does(
    tmp_path: Any, client: str
) -> None:
    """An upstream that keeps its body open 300 ms after [DONE]: the replay's end time is the
    terminal event's, and the request is ok (with both senders)."""
    from captures.testing import T0_NS, chat_record, write_capture
    from replay.api import run_replay
    from replay.measure.resultsdir import Results
    from replay.mock.threaded import running_gateway
    from replay.workload.replaying import ReplayOptions

    recs = [chat_record(start_ns=T0_NS + i * 10 * MS, stream=True, max_tokens=4) for i in range(4)]
    cap = write_capture(tmp_path / "cap", recs)
    with running_gateway(eof_delay_ms=300, default_profile="instant") as gw:
        r = run_replay(
            ReplayOptions(
                capture=str(cap), target=gw.url, out=str(tmp_path / "run"), client=client
            ),
            install_signals=False,
        )
    rows = Results.open(r.out_dir).table().to_pylist()
    assert len(rows) == 4 and all(x["outcome"] == "ok" and x["stream_complete"] for x in rows)
    assert all(x["end_ns"] - x["sent_ns"] < 150 * MS for x in rows), [
        (x["end_ns"] - x["sent_ns"]) / MS for x in rows
    ]
