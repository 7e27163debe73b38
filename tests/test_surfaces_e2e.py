"""Every API surface end to end, driven the way users send traffic: the real `openai` and
`anthropic` SDKs (no session hints, streamed and not), through a real mitmdump with the capture
addon, in front of the mock gateway; then the capture replayed against a fresh mock. TTFT must
land on each API's first output event, within a few ms of the mock's configured delay, and
usage, finish reasons and the API surface must be in the capture and in the results. Run with
the mock answering uncoded, then coding its answers br and gzip (a gateway behind a compressing
proxy: the SDKs ask for gzip, deflate, br and zstd where the modules are installed): before,
a br answer's usage, finish and events were missing from the capture, and a gzip stream's
first output was put at its first chunk."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from proxies import start_proxy

from captures.reader import Capture
from replay.api import run_replay
from replay.decide.report import build
from replay.measure.resultsdir import Results
from replay.mock.config import GatewayConfig, ModelProfile
from replay.mock.threaded import running_gateway
from replay.workload.replaying import ReplayOptions

TTFT_MS, ITL_MS = 60.0, 8.0
PROFILES = {
    "e2e": ModelProfile("e2e", TTFT_MS, 0.0, ITL_MS, output_tokens_median=10),
    "e2e-reasoner": ModelProfile("e2e-reasoner", TTFT_MS, 0.0, ITL_MS, 10, reasoning_tokens=6),
}
CONFIG = GatewayConfig(
    default_profile="e2e",
    profiles=PROFILES,
    models={"m": "e2e", "r": "e2e-reasoner", "e": "e2e"},
    seed=3,
)
TOOLS_CHAT = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
TOOLS_RESP = [
    {"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {}}}
]
TOOLS_ANTH = [{"name": "weather", "input_schema": {"type": "object", "properties": {}}}]
HI = [{"role": "user", "content": "hello there"}]


def sdk_traffic(base: str) -> list[tuple[str, bool, str]]:
    """One request per surface, kind and mode; returns (api, streamed, what) for each sent."""
    with (
        openai.OpenAI(
            base_url=f"{base}/v1", api_key="sk-e2e-not-a-real-key-0000", max_retries=0
        ) as oc,
        anthropic.Anthropic(base_url=base, api_key="sk-ant-e2e-not-real-0000", max_retries=0) as ac,
    ):
        return _sdk_traffic(oc, ac)


def _sdk_traffic(oc: openai.OpenAI, ac: anthropic.Anthropic) -> list[tuple[str, bool, str]]:
    sent: list[tuple[str, bool, str]] = []

    def drain(stream: Any) -> None:
        for _ in stream:
            pass

    oc.chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    sent.append(("chat", False, "text"))
    drain(
        oc.chat.completions.create(
            model="m",
            messages=HI,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )
    sent.append(("chat", True, "text"))
    drain(oc.chat.completions.create(model="m", messages=HI, tools=TOOLS_CHAT, stream=True))  # type: ignore[arg-type]
    sent.append(("chat", True, "tool"))
    drain(
        oc.chat.completions.create(
            model="r",
            messages=HI,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    sent.append(("chat", True, "reasoning"))
    oc.completions.create(model="m", prompt="once upon a time")
    sent.append(("completions", False, "text"))
    drain(oc.completions.create(model="m", prompt="once upon a time", stream=True))
    sent.append(("completions", True, "text"))
    r = oc.responses.create(model="m", input="hello there")
    assert r.status == "completed" and r.output_text
    sent.append(("responses", False, "text"))
    with oc.responses.stream(model="r", input="think first") as s:
        drain(s)
    sent.append(("responses", True, "reasoning"))
    with oc.responses.stream(model="m", input="weather?", tools=TOOLS_RESP) as s:  # type: ignore[arg-type]
        drain(s)
    sent.append(("responses", True, "tool"))
    m = ac.messages.create(model="m", max_tokens=1, messages=HI)  # type: ignore[arg-type]
    assert m.stop_reason == "max_tokens"
    sent.append(("messages", False, "text"))
    with ac.messages.stream(
        model="m",
        max_tokens=200,
        messages=HI,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as s:
        drain(s)
    sent.append(("messages", True, "reasoning"))
    with ac.messages.stream(model="m", max_tokens=200, messages=HI, tools=TOOLS_ANTH) as s:  # type: ignore[arg-type]
        drain(s)
    sent.append(("messages", True, "tool"))
    e = oc.embeddings.create(model="e", input=["alpha", "beta"])
    assert len(e.data) == 2
    sent.append(("embeddings", False, "vector"))
    return sent


Recorded = tuple[Path, list[tuple[str, bool, str]], GatewayConfig]


@pytest.fixture(scope="module", params=["", "br", "gzip"], ids=["uncoded", "br", "gzip"])
def recorded(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Recorded:
    tmp = tmp_path_factory.mktemp("e2e")
    config = dataclasses.replace(CONFIG, coding=request.param)
    with running_gateway(config) as gw:
        proc = start_proxy(tmp, gw.url)
        try:
            sent = sdk_traffic(proc.url)
        finally:
            proc.stop()
    if config.coding:  # the SDKs asked for it, so the mock coded every answer
        rows = Capture(tmp / "cap").records()
        assert {r["resp_content_encoding"] for r in rows} == {config.coding}
    return tmp / "cap", sent, config


def test_every_request_is_captured_with_its_surface_usage_and_finish(recorded: Recorded) -> None:
    cap, sent, _ = recorded
    rows = Capture(cap).records()
    assert Counter(r["api"] for r in rows) == Counter(api for api, _, _ in sent)
    finishes = {
        "chat": {"stop", "tool_calls"},
        "completions": {"stop"},
        "responses": {"completed"},
        "messages": {"max_tokens", "end_turn", "tool_use"},
        "embeddings": {None},
    }
    for r in rows:
        assert r["status"] == 200 and r["finish_reason"] in finishes[r["api"]], r["api"]
        assert r["model"] in ("m", "r", "e")
        # usage comes with every answer but chat and completions streams that did not ask for it
        # (stream_options.include_usage: the SDK does not set it)
        asked = b"include_usage" in r["req_body"]
        if not (r["stream"] and r["api"] in ("chat", "completions")) or asked:
            assert r["prompt_tokens"], r["api"]
            assert r["completion_tokens"] or r["api"] == "embeddings", r["api"]
    streamed = [r for r in rows if r["stream"]]
    assert len(streamed) == sum(1 for _, s, _ in sent if s)
    for r in streamed:
        assert r["stream_complete"] is True and r["output_events"] > 0, r["api"]
        # the chunk that carried the first output event came TTFT after the request
        ttft = (r["resp_start_ns"] - r["req_start_ns"]) / 1e6 + r["first_token_us"] / 1000
        assert TTFT_MS - 2 <= ttft <= TTFT_MS + 40, (r["api"], ttft)
    reasoning = [r for r in streamed if r["reasoning_tokens"]]
    assert {r["api"] for r in reasoning} >= {"chat", "responses"}
    for r in streamed:
        if r["first_text_us"] is not None and r["first_text_us"] > r["first_token_us"]:
            # text after 6 reasoning tokens (or a thinking block) came some ITLs later
            assert r["first_text_us"] - r["first_token_us"] >= 3 * ITL_MS * 1000, r["api"]


def test_replay_measures_ttft_usage_and_finish_per_surface(
    recorded: Recorded, tmp_path: Path
) -> None:
    cap, sent, config = recorded
    with running_gateway(config) as gw:
        r = run_replay(
            ReplayOptions(capture=str(cap), target=gw.url, out=str(tmp_path / "run"), speed=5.0),
            install_signals=False,
        )
    res = Results.open(r.out_dir)
    rows = res.table().to_pylist()
    assert len(rows) == len(sent)
    assert all(row["outcome"] == "ok" for row in rows), [
        (row["api"], row["error_kind"], row["error_message"]) for row in rows if row["error_kind"]
    ]
    for row in rows:
        assert row["api"] in ("chat", "completions", "responses", "messages", "embeddings")
        if row["api"] == "embeddings":
            assert row["prompt_tokens"]
            continue
        assert row["finish_reason"], row["api"]
        # usage where the answer carries it (chat/completions streams: when asked for)
        if row["api"] in ("responses", "messages") or not row["token_offsets_us"]:
            assert row["prompt_tokens"] and row["completion_tokens"], row["api"]
        if row["token_offsets_us"]:  # a stream: TTFT at the API's first output event
            ttft = (row["first_token_ns"] - row["sent_ns"]) / 1e6
            assert TTFT_MS - 2 <= ttft <= TTFT_MS + 25, (row["api"], ttft)
            assert row["stream_complete"] is True
            gaps = [
                b - a
                for a, b in zip(row["token_offsets_us"], row["token_offsets_us"][1:], strict=False)
            ]
            assert gaps and sorted(gaps)[len(gaps) // 2] >= ITL_MS * 1000 * 0.7, row["api"]
            if row["reasoning_events"]:
                assert row["first_text_ns"] is None or row["first_text_ns"] > row["first_token_ns"]
            if row["tool_events"]:
                assert row["text_events"] == 0 and row["first_text_ns"] is None
    rep = build(res, "api")
    groups = {g["key"]["api"]: g for g in rep["groups"]}
    assert set(groups) == {"chat", "completions", "responses", "messages", "embeddings"}
    assert groups["chat"]["metrics"]["ttft"]["count"] == 3  # text, tool and reasoning streams
    assert groups["responses"]["reasoning_tokens"] > 0
    assert groups["messages"]["finish_reasons"].keys() >= {"max_tokens", "tool_use"}
    assert groups["chat"]["metrics"]["ttft_text"]["count"] == 2  # the tool stream has no text
