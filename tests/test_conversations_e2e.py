"""Conversations as real SDK users hold them, with no session hint, through a real mitmdump in
front of the mock gateway (which, like some upstreams, keeps a stream's body open after its
terminal event, so the SDK closes first); then replayed at 5x with `--sessions ordered` against
a fresh mock whose Responses store starts empty.

Checked: every conversation is found from content alone (one id per conversation, turns in
order), no complete stream is an error, every replayed request succeeds (recorded response and
tool-call ids mapped to the new target's), every turn is sent after its predecessor finished,
and `diff` calls the identical mock's answers equivalent."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from proxies import start_proxy

from captures.reader import Capture
from replay.api import run_replay
from replay.decide.diff import diff
from replay.measure.resultsdir import Results
from replay.mock.config import GatewayConfig, ModelProfile
from replay.mock.threaded import running_gateway
from replay.workload.replaying import ReplayOptions

PROFILE = ModelProfile("conv", 20.0, 0.0, 3.0, output_tokens_median=8)
CONFIG = GatewayConfig(default_profile="conv", profiles={"conv": PROFILE}, models={}, seed=5)
THINK_S = 0.08
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}


def chat_conversation(oc: openai.OpenAI, system: str, first: str, turns: int) -> int:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for t in range(turns):
        msgs.append({"role": "user", "content": first if t == 0 else f"and then {t}?"})
        if t % 2:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in oc.chat.completions.create(model="m", messages=msgs, stream=True)  # type: ignore[arg-type]
                if c.choices
            )
        else:
            r = oc.chat.completions.create(model="m", messages=msgs)  # type: ignore[arg-type]
            text = r.choices[0].message.content or ""
        msgs.append({"role": "assistant", "content": text})
        time.sleep(THINK_S)
    return turns


def chat_tool_round(oc: openai.OpenAI) -> int:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": WEATHER}}]
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "weather in Paris?"}]
    r = oc.chat.completions.create(model="m", messages=msgs, tools=tools)  # type: ignore[arg-type]
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    msgs.append(r.choices[0].message.model_dump(exclude_none=True))
    msgs.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"})
    time.sleep(THINK_S)
    drained = list(oc.chat.completions.create(model="m", messages=msgs, tools=tools, stream=True))  # type: ignore[arg-type]
    assert drained
    return 2


def responses_chain(oc: openai.OpenAI) -> int:
    r1 = oc.responses.create(model="m", instructions="be terse", input="first question")
    time.sleep(THINK_S)
    r2 = oc.responses.create(model="m", previous_response_id=r1.id, input="second question")
    time.sleep(THINK_S)
    with oc.responses.stream(model="m", previous_response_id=r2.id, input="third") as s:
        final = s.get_final_response()
    tools = [{"type": "function", "name": "weather", "parameters": WEATHER}]
    time.sleep(THINK_S)
    rt = oc.responses.create(
        model="m", previous_response_id=final.id, input="weather?", tools=tools
    )  # type: ignore[arg-type]
    call = next(o for o in rt.output if o.type == "function_call")
    time.sleep(THINK_S)
    oc.responses.create(
        model="m",
        previous_response_id=rt.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=tools,  # type: ignore[arg-type]
    )
    return 5


def anthropic_conversation(ac: anthropic.Anthropic) -> int:
    tools = [{"name": "weather", "input_schema": WEATHER}]
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "hello there"}]
    m = ac.messages.create(model="m", max_tokens=64, messages=msgs)  # type: ignore[arg-type]
    msgs.append({"role": "assistant", "content": [b.model_dump() for b in m.content]})
    msgs.append({"role": "user", "content": "weather in Oslo?"})
    time.sleep(THINK_S)
    with ac.messages.stream(model="m", max_tokens=64, messages=msgs, tools=tools) as s:  # type: ignore[arg-type]
        m2 = s.get_final_message()
    use = next(b for b in m2.content if b.type == "tool_use")
    msgs.append({"role": "assistant", "content": [b.model_dump() for b in m2.content]})
    msgs.append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "snow"}],
        }
    )
    time.sleep(THINK_S)
    ac.messages.create(model="m", max_tokens=64, messages=msgs, tools=tools)  # type: ignore[arg-type]
    return 3


def traffic(base: str) -> dict[str, int]:
    """Conversations in threads, so their turns interleave; name -> requests."""
    with (
        openai.OpenAI(
            base_url=f"{base}/v1", api_key="sk-conv-not-real-000000", max_retries=0
        ) as oc,
        anthropic.Anthropic(
            base_url=base, api_key="sk-ant-conv-not-real-0000", max_retries=0
        ) as ac,
    ):
        return _traffic(oc, ac)


def _traffic(oc: openai.OpenAI, ac: anthropic.Anthropic) -> dict[str, int]:
    jobs = {
        # two conversations that open with the same user message
        "chat-a": lambda: chat_conversation(oc, "You are A.", "hello there", 4),
        "chat-b": lambda: chat_conversation(oc, "You are B.", "hello there", 4),
        "chat-tools": lambda: chat_tool_round(oc),
        "responses": lambda: responses_chain(oc),
        "anthropic": lambda: anthropic_conversation(ac),
    }
    counts: dict[str, int] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            counts[name] = jobs[name]()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return counts


Recorded = tuple[Path, dict[str, int], GatewayConfig]


# uncoded, and coded br as a gateway behind a compressing proxy answers the SDKs (which ask for
# br): the ids an answer mints, that later turns name, are read from the coded answers too
@pytest.fixture(scope="module", params=["", "br"], ids=["uncoded", "br"])
def recorded(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Recorded:
    tmp = tmp_path_factory.mktemp("conv")
    config = dataclasses.replace(CONFIG, coding=request.param)
    with running_gateway(config, eof_delay_ms=150) as gw:
        proc = start_proxy(tmp, gw.url)
        try:
            counts = traffic(proc.url)
        finally:
            proc.stop()
        assert gw.stats.closed_early > 0  # the SDK did close before the body's end
    return tmp / "cap", counts, config


def test_conversations_are_found_from_content(recorded: Recorded) -> None:
    cap, counts, config = recorded
    rows = Capture(cap).records()
    assert len(rows) == sum(counts.values())
    assert not [r["error_kind"] for r in rows if r["error_kind"]]  # complete streams, no abort
    assert {r["resp_content_encoding"] for r in rows} == {config.coding or None}
    assert all(r["stream_complete"] for r in rows if r["stream"])
    by_conv: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        assert r["session_key"] == r["conversation"]  # no hint, so the chain is the session
        by_conv[r["conversation"]].append(r)
    assert sorted(len(v) for v in by_conv.values()) == sorted(counts.values())
    for turns in by_conv.values():
        turns.sort(key=lambda r: r["req_start_ns"])
        assert [r["turn"] for r in turns] == list(range(len(turns)))
        assert turns[0]["think_us"] is None
        assert all(r["think_us"] >= THINK_S * 1e6 * 0.8 for r in turns[1:])
        assert len({r["api"] for r in turns}) == 1


def test_ordered_replay_maps_ids_and_keeps_turns_in_order(
    recorded: Recorded, tmp_path: Path
) -> None:
    cap, counts, config = recorded
    with running_gateway(config, eof_delay_ms=150) as gw:  # a fresh store: no recorded id known
        r = run_replay(
            ReplayOptions(
                capture=str(cap),
                target=gw.url,
                out=str(tmp_path / "run"),
                speed=5.0,
                sessions="ordered",
                history="live",
            ),
            install_signals=False,
        )
        assert gw.stats.refused == 0
    res = Results.open(r.out_dir)
    rows = res.table().to_pylist()
    assert len(rows) == sum(counts.values())
    bad = [
        (x["api"], x["status"], x["error_kind"], x["error_message"])
        for x in rows
        if x["outcome"] != "ok"
    ]
    assert not bad
    assert (
        r.run["counts"]["ids_mapped"] >= 4
    )  # 3 previous_response_ids, 1 function_call_output, ...
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for x in rows:
        by_session[x["session"]].append(x)
    assert len(by_session) == len(counts)
    for turns in by_session.values():
        turns.sort(key=lambda x: x["seq"])
        for a, b in itertools.pairwise(turns):
            assert b["sent_ns"] >= a["end_ns"], "a turn went before its predecessor finished"
        # a stream ends at its terminal event: the 150 ms the body stays open do not count
        for x in turns:
            if x["token_offsets_us"]:
                assert x["end_ns"] - x["sent_ns"] < 120e6, (x["api"], x["end_ns"] - x["sent_ns"])
    assert r.run["counts"]["live_answers"] > 0
    doc = diff(res, str(cap))
    c = doc["comparisons"][0]
    assert c["verdicts"]["different"] == 0, c["examples"]
    assert c["verdicts"]["equivalent"] + c["verdicts"]["identical"] == len(rows)
