"""Importers on the shared public traces (read as they are; slices taken at run time) and on
hand-made edge cases. Expected values come from parsing the source files independently here."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from captures import codec
from captures.errors import UserError
from captures.importers import BASE_NS, TRACE_HOST, ImportOptions, import_file
from captures.importers.traces import parse_timestamp_ns
from captures.reader import Capture
from replay.plan import PlanOptions, plan_replay
from replay.workload.replaying import capture_source

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
AZURE = TRACES / "azure2023_AzureLLMInferenceTrace_code.csv"
MOONCAKE = TRACES / "mooncake_fast25_synthetic_trace.jsonl"
LOADTAPE = [sys.executable, "-c", "import cli; cli.main()"]

needs_traces = pytest.mark.skipif(
    not (AZURE.exists() and MOONCAKE.exists()), reason="../shared/traces not beside the project"
)


def rows(cap: Path, cols: list[str] | None = None) -> list[dict[str, object]]:
    return Capture(cap).records(cols)


def epoch_ns(text: str) -> int:
    """An independent parse: '2023-11-16 18:17:03.9799600' -> ns (UTC), via Decimal."""
    import datetime as dt

    date, clock = text.strip().split(" ")
    whole, _, frac = clock.partition(".")
    base = dt.datetime.fromisoformat(f"{date}T{whole}+00:00").timestamp()
    return int(Decimal(int(base)) * 10**9 + Decimal("0." + (frac or "0")) * 10**9)


# -- Azure ---------------------------------------------------------------------------------------
@needs_traces
def test_azure_whole_trace_keeps_every_timestamp_and_token_count(tmp_path: Path) -> None:
    raw = AZURE.read_bytes()
    assert b"\r\n" in raw  # the shared file has CRLF line endings: the importer must cope
    src = list(csv.DictReader(io.StringIO(raw.decode(), newline="")))
    s = import_file("azure", AZURE, tmp_path / "az")
    assert s.records == len(src) == 8819
    got = rows(tmp_path / "az", ["req_start_ns", "prompt_tokens", "max_tokens", "model", "host"])
    want_ts = sorted(epoch_ns(r["TIMESTAMP"]) for r in src)
    assert [r["req_start_ns"] for r in got] == want_ts  # to the 100 ns digit, none merged
    assert got[0]["req_start_ns"] == epoch_ns("2023-11-16 18:17:03.9799600")
    assert sorted(r["prompt_tokens"] for r in got) == sorted(int(r["ContextTokens"]) for r in src)
    assert sorted(r["max_tokens"] for r in got) == sorted(
        max(int(r["GeneratedTokens"]), 1) for r in src
    )
    assert {r["host"] for r in got} == {TRACE_HOST} and {r["model"] for r in got} == {"azure-trace"}
    span = (want_ts[-1] - want_ts[0]) / 1e9
    assert span == pytest.approx(3436, abs=1)
    per_s = np.bincount((np.array(want_ts) - want_ts[0]) // 10**9)
    assert per_s.max() == 67  # the README's peak second survives


@needs_traces
def test_azure_slice_prompt_is_about_the_token_count(tmp_path: Path) -> None:
    head = b"".join(AZURE.read_bytes().splitlines(keepends=True)[:41])  # header + 40 rows
    (tmp_path / "slice.csv").write_bytes(head)
    import_file("azure", tmp_path / "slice.csv", tmp_path / "az", ImportOptions(model="m"))
    from captures.filler import token_count

    for r in rows(tmp_path / "az", ["req_body", "prompt_tokens", "stream"]):
        body = json.loads(r["req_body"])  # type: ignore[arg-type]
        assert body["stream"] is True and body["model"] == "m"
        n = token_count(body["messages"][0]["content"])
        assert abs(n - r["prompt_tokens"]) <= max(2, 0.02 * r["prompt_tokens"])  # type: ignore[operator]


def test_azure_2024_edition_with_utc_offsets(tmp_path: Path) -> None:
    f = tmp_path / "az24.csv"
    f.write_bytes(
        b"TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
        b"2024-05-12 00:00:00.001163+00:00,100,10\r\n"
        b"2024-05-12 00:00:00.001163+00:00,200,20\r\n"  # same instant: both kept
        b"2024-05-12 02:00:01.5+02:00,300,30\r\n"  # = 00:00:01.5 UTC
    )
    import_file("azure", f, tmp_path / "cap")
    ts = [r["req_start_ns"] for r in rows(tmp_path / "cap", ["req_start_ns"])]
    t0 = epoch_ns("2024-05-12 00:00:00.001163")
    assert ts == [t0, t0, t0 - 1_163_000 + 1_500_000_000]


def test_timestamp_parser_edge_cases() -> None:
    assert parse_timestamp_ns("2023-11-16 18:17:03.9799600") % 10**9 == 979_960_000
    assert parse_timestamp_ns("2023-11-16T18:17:03Z") == parse_timestamp_ns("2023-11-16 18:17:03")
    assert parse_timestamp_ns("2023-11-16 18:17:03-0130") == parse_timestamp_ns(
        "2023-11-16 19:47:03"
    )
    with pytest.raises(ValueError):
        parse_timestamp_ns("16/11/2023 18:17")


# -- Mooncake ------------------------------------------------------------------------------------
@needs_traces
def test_mooncake_slice_keeps_ms_spacing_and_shares_prefixes(tmp_path: Path) -> None:
    lines = MOONCAKE.read_text().splitlines()[:250]
    src = [json.loads(x) for x in lines]
    (tmp_path / "mc.jsonl").write_text("\n".join(lines) + "\n")
    import_file("mooncake", tmp_path / "mc.jsonl", tmp_path / "cap", ImportOptions(stream=False))
    got = rows(tmp_path / "cap", ["req_start_ns", "req_body", "prompt_tokens", "max_tokens"])
    assert [r["req_start_ns"] for r in got] == [BASE_NS + o["timestamp"] * 10**6 for o in src]
    prompts = [json.loads(r["req_body"])["messages"][0]["content"].split() for r in got]  # type: ignore[arg-type]
    for o, words, r in zip(src, prompts, got, strict=True):
        assert len(words) == o["input_length"] == r["prompt_tokens"]
        assert r["max_tokens"] == max(o["output_length"], 1)
    # every pair that shares leading hash_ids shares exactly that many 512-token blocks of text
    pairs = 0
    for i in range(len(src)):
        for j in range(i + 1, min(i + 60, len(src))):
            a, b = src[i]["hash_ids"], src[j]["hash_ids"]
            k = 0
            while k < min(len(a), len(b)) - 1 and a[k] == b[k]:
                k += 1
            if k == 0:
                assert prompts[i][:512] != prompts[j][:512]
                continue
            pairs += 1
            assert prompts[i][: 512 * k] == prompts[j][: 512 * k]
            if a[k] != b[k]:
                assert prompts[i][512 * k : 512 * (k + 1)] != prompts[j][512 * k : 512 * (k + 1)]
    assert pairs > 0  # the slice has shared prefixes to check


def test_mooncake_many_requests_in_one_millisecond(tmp_path: Path) -> None:
    f = tmp_path / "burst.jsonl"
    lines = [
        {"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]},
        *(
            {"timestamp": 7, "input_length": 20 + i, "output_length": 2, "hash_ids": [1, 2]}
            for i in range(6)
        ),
        {"timestamp": 8, "input_length": 600, "output_length": 3, "hash_ids": [1, 3]},
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    import_file("mooncake", f, tmp_path / "cap")
    got = rows(tmp_path / "cap", ["req_start_ns", "prompt_tokens"])
    assert [r["req_start_ns"] - BASE_NS for r in got] == [0] + [7_000_000] * 6 + [8_000_000]  # type: ignore[operator]
    assert [r["prompt_tokens"] for r in got] == [10, 20, 21, 22, 23, 24, 25, 600]  # file order kept
    cap = Capture(tmp_path / "cap")
    shots = list(plan_replay(capture_source(cap, None), BASE_NS, PlanOptions()))
    assert [s.offset_ns for s in shots] == [0] + [7_000_000] * 6 + [8_000_000]


# -- BurstGPT ------------------------------------------------------------------------------------
def test_burstgpt_v1_and_v3_columns(tmp_path: Path) -> None:
    v1 = tmp_path / "v1.csv"
    v1.write_text(
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "5,ChatGPT,472,18,490,Conversation log\n"
        "45,GPT-4,1087,0,1087,API log\n"
        "45.25,ChatGPT,12,7,19,Conversation log\n"
    )
    v3 = tmp_path / "v3.csv"
    v3.write_text(
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "0.5,s-1,1.2,ChatGPT,100,20,120,Conversation log\n"
        "1.5,s-1,0.8,ChatGPT,130,25,155,Conversation log\n"
        "2.0,s-2,3.1,GPT-4,50,5,55,API log\n"
    )
    s1 = import_file("burstgpt", v1, tmp_path / "c1")
    assert s1.records == 3 and sum(s1.noted.values()) == 1 and not s1.skipped
    r1 = rows(tmp_path / "c1", ["req_start_ns", "model", "prompt_tokens", "max_tokens"])
    assert [r["req_start_ns"] - BASE_NS for r in r1] == [5 * 10**9, 45 * 10**9, 45_250_000_000]  # type: ignore[operator]
    assert [r["model"] for r in r1] == ["ChatGPT", "GPT-4", "ChatGPT"]
    assert [r["max_tokens"] for r in r1] == [18, 1, 7]
    import_file("burstgpt", v3, tmp_path / "c3", ImportOptions(model="small"))
    r3 = rows(tmp_path / "c3", ["session_key", "model", "prompt_tokens"])
    assert [r["session_key"] for r in r3] == ["s-1", "s-1", "s-2"]
    assert {r["model"] for r in r3} == {"small"}  # --model overrides the trace's names
    assert [r["prompt_tokens"] for r in r3] == [100, 130, 50]


# -- ShareGPT ------------------------------------------------------------------------------------
def sharegpt_file(path: Path, n: int = 30) -> Path:
    convs = [
        {
            "id": f"c{i}",
            "conversations": [
                {"from": "system", "value": "ignored"},
                {"from": "human", "value": f"question number {i} about gateways"},
                {"from": "gpt", "value": " ".join(["word"] * (5 + i))},
            ],
        }
        for i in range(n)
    ]
    convs.append({"id": "empty", "conversations": []})
    path.write_text(json.dumps(convs))
    return path


def test_sharegpt_needs_an_arrival_and_follows_it(tmp_path: Path) -> None:
    f = sharegpt_file(tmp_path / "sg.json")
    with pytest.raises(UserError, match="--arrival"):
        import_file("sharegpt", f, tmp_path / "none")
    s = import_file(
        "sharegpt", f, tmp_path / "cap", ImportOptions(arrival="constant:rate=10", seed=3)
    )
    assert s.records == 30
    got = rows(tmp_path / "cap", ["req_start_ns", "req_body", "max_tokens"])
    assert [r["req_start_ns"] - BASE_NS for r in got] == [i * 100_000_000 for i in range(30)]  # type: ignore[operator]
    first = json.loads(got[0]["req_body"])  # type: ignore[arg-type]
    assert first["messages"] == [{"role": "user", "content": "question number 0 about gateways"}]
    assert [r["max_tokens"] for r in got] == [5 + i for i in range(30)]


# -- HAR and mitmproxy flow files ---------------------------------------------------------------
def har_entry(url: str, started: str, **kw: object) -> dict[str, object]:
    body = json.dumps({"model": "small", "messages": [{"role": "user", "content": "hi"}]})
    return {
        "startedDateTime": started,
        "time": 120.5,
        "timings": {"send": 0.5, "wait": 100, "receive": 20},
        "request": {
            "method": "POST",
            "url": url,
            "httpVersion": "HTTP/1.1",
            "headers": [
                {"name": "Content-Type", "value": "application/json"},
                {"name": "Authorization", "value": "Bearer sk-livesecret0123456789abcdef"},
                {"name": ":authority", "value": "ignored"},
            ],
            "postData": {"mimeType": "application/json", "text": body},
        },
        "response": {
            "status": 200,
            "statusText": "OK",
            "headers": [{"name": "Content-Type", "value": "application/json"}],
            "content": {
                "mimeType": "application/json",
                "encoding": "base64",
                "text": base64.b64encode(
                    json.dumps(
                        {
                            "choices": [{"message": {"content": "hello"}}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
                        }
                    ).encode()
                ).decode(),
            },
        },
        **kw,
    }


def test_har_entries_become_records_with_timings_and_no_secret(tmp_path: Path) -> None:
    har = {
        "log": {
            "version": "1.2",
            "entries": [
                har_entry(
                    "https://api.example.com/v1/chat/completions?x=1", "2024-03-01T10:00:00.250Z"
                ),
                har_entry(
                    "http://gw.local:8080/v1/chat/completions", "2024-03-01T10:00:01.000+01:00"
                ),
                har_entry("wss://api.example.com/socket", "2024-03-01T10:00:02Z"),
            ],
        }
    }
    f = tmp_path / "x.har"
    f.write_text(json.dumps(har))
    s = import_file("har", f, tmp_path / "cap")
    assert s.records == 2 and s.skipped == {"wss scheme": 1}
    got = rows(tmp_path / "cap")
    b, a = sorted(got, key=lambda r: r["port"])  # type: ignore[arg-type, return-value]
    assert (a["scheme"], a["host"], a["port"], a["path"]) == (
        "http",
        "gw.local",
        8080,
        "/v1/chat/completions",
    )
    assert (b["scheme"], b["port"], b["path"], b["query"]) == (
        "https",
        443,
        "/v1/chat/completions",
        "x=1",
    )
    assert b["status"] == 200 and b["model"] == "small" and b["completion_tokens"] == 2
    assert b["resp_body"] is not None and b"hello" in b["resp_body"]  # type: ignore[operator]
    assert (b["resp_end_ns"] - b["req_start_ns"]) == 120_500_000  # type: ignore[operator]
    assert b["req_start_ns"] == epoch_ns("2024-03-01 10:00:00.250")
    assert a["req_start_ns"] == epoch_ns("2024-03-01 09:00:01")  # +01:00 honoured
    assert all(":authority" not in dict(r["req_headers"]) for r in got)  # type: ignore[arg-type]
    dump = json.dumps(got, default=repr)
    assert "livesecret" not in dump and "[REDACTED:" in dump


def test_har_bodies_are_decoded_whatever_content_encoding_says(tmp_path: Path) -> None:
    """HAR keeps bodies decoded beside the headers as sent (Chrome's and mitmproxy's exports):
    a `Content-Encoding: br` answer's usage is read and its body kept, the header left out of
    the record. Before, the body was read as br: no usage, and redaction dropped it. A body
    that its header does decode (raw bytes, base64) stays coded, as a live capture keeps it."""
    decoded = har_entry("http://gw.local:8080/v1/chat/completions", "2024-03-01T10:00:00Z")
    decoded["response"]["headers"].append({"name": "Content-Encoding", "value": "br"})  # type: ignore[index]
    decoded["request"]["headers"].append({"name": "Content-Encoding", "value": "gzip"})  # type: ignore[index]
    raw = har_entry("http://gw.local:8080/v1/chat/completions", "2024-03-01T10:00:01Z")
    content = raw["response"]["content"]  # type: ignore[index]
    content["text"] = base64.b64encode(
        codec.encode(base64.b64decode(content["text"]), "zstd")
    ).decode()
    raw["response"]["headers"].append({"name": "Content-Encoding", "value": "zstd"})  # type: ignore[index]
    f = tmp_path / "x.har"
    f.write_text(json.dumps({"log": {"version": "1.2", "entries": [decoded, raw]}}))
    import_file("har", f, tmp_path / "cap")
    a, b = sorted(rows(tmp_path / "cap"), key=lambda r: r["req_start_ns"])  # type: ignore[arg-type, return-value]
    for r in (a, b):
        assert r["completion_tokens"] == 2 and r["model"] == "small"
    assert a["resp_content_encoding"] is None and a["req_content_encoding"] is None
    assert b"hello" in a["resp_body"]  # type: ignore[operator]
    assert not any(n.lower() == "content-encoding" for n, _ in a["req_headers"] + a["resp_headers"])  # type: ignore[operator]
    assert b["resp_content_encoding"] == "zstd"
    assert b"hello" in codec.decode(b["resp_body"], "zstd")  # type: ignore[arg-type, operator]


def test_mitmproxy_flow_file_read_with_mitmproxys_own_io(tmp_path: Path) -> None:
    from mitmproxy import io as mio
    from mitmproxy.test import tflow

    flows = []
    for i in range(3):
        f = tflow.tflow(resp=True)
        f.request.method = "POST"
        f.request.host, f.request.port, f.request.path = "127.0.0.1", 8000, "/v1/chat/completions"
        f.request.headers["Authorization"] = "Bearer sk-flowsecret0123456789abcdef"
        f.request.content = json.dumps(
            {"model": "large", "messages": [{"role": "user", "content": f"q{i}"}], "user": "u1"}
        ).encode()
        f.request.timestamp_start = 1_700_000_000.0 + i * 0.001  # 1 ms apart
        f.request.timestamp_end = f.request.timestamp_start + 0.0001
        f.response.timestamp_start = f.request.timestamp_start + 0.05
        f.response.timestamp_end = f.request.timestamp_start + 0.06
        flows.append(f)
    flows.append(tflow.tflow(err=True))
    path = tmp_path / "flows.mitm"
    with open(path, "wb") as fh:
        w = mio.FlowWriter(fh)
        for f in flows:
            w.add(f)
    s = import_file("mitmproxy", path, tmp_path / "cap")
    assert s.records == 4
    got = rows(tmp_path / "cap")
    ok = [r for r in got if r["model"] == "large"]
    want = [1_700_000_000_000_000_000 + i * 1_000_000 for i in range(3)]  # float s, to the us
    assert [r["req_start_ns"] for r in ok] == want
    assert all(r["method"] == "POST" and r["status"] == 200 and r["user"] for r in ok)
    assert [r for r in got if r["error_kind"]], "the errored flow is kept as a failure row"
    assert "flowsecret" not in json.dumps(got, default=repr)


# -- wrong files ---------------------------------------------------------------------------------
@needs_traces
@pytest.mark.parametrize(
    ("fmt", "source", "needle"),
    [
        ("azure", MOONCAKE, "not a Azure LLM inference trace CSV"),
        ("burstgpt", AZURE, "not a BurstGPT CSV (no 'Model' column"),
        ("mooncake", AZURE, ":1: not a Mooncake trace line"),
        ("har", AZURE, "not a HAR file"),
        ("mitmproxy", AZURE, "not a mitmproxy flow file"),
        ("sharegpt", MOONCAKE, "not a ShareGPT JSON file"),
    ],
)
def test_wrong_file_for_the_format_is_a_clear_error(
    tmp_path: Path, fmt: str, source: Path, needle: str
) -> None:
    kw = ["--arrival", "poisson:rate=1"] if fmt == "sharegpt" else []
    p = subprocess.run(
        [*LOADTAPE, "import", fmt, str(source), "--out", str(tmp_path / "cap"), *kw],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_bad_row_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.1,5,6\nyesterday,5,6\n"
    )
    with pytest.raises(UserError, match=r"a\.csv:3: bad TIMESTAMP"):
        import_file("azure", f, tmp_path / "cap")
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.1,-5,6\n")
    with pytest.raises(UserError, match=r"a\.csv:2: ContextTokens is negative"):
        import_file("azure", f, tmp_path / "cap2")
    with pytest.raises(UserError, match="no such file"):
        import_file("azure", tmp_path / "missing.csv", tmp_path / "cap3")
    with pytest.raises(UserError, match="unknown import format"):
        import_file("parquet", f, tmp_path / "cap4")


@needs_traces
def test_cli_import_then_replay_keeps_the_trace_spacing(tmp_path: Path) -> None:
    """The imported Azure trace replays at its recorded spacing (here 200x faster, 60 rows);
    the target is given, never taken from the trace."""
    from replay.api import run_replay
    from replay.mock.threaded import running_gateway
    from replay.workload.replaying import ReplayOptions

    head = b"".join(AZURE.read_bytes().splitlines(keepends=True)[:61])
    (tmp_path / "slice.csv").write_bytes(head)
    p = subprocess.run(
        [
            *LOADTAPE,
            "import",
            "azure",
            str(tmp_path / "slice.csv"),
            "--out",
            str(tmp_path / "cap"),
            "--model",
            "small",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and "imported 60 requests" in p.stdout, p.stderr
    src = sorted(epoch_ns(r["TIMESTAMP"]) for r in csv.DictReader(io.StringIO(head.decode())))
    with running_gateway(default_profile="instant") as gw:
        r = run_replay(
            ReplayOptions(
                capture=str(tmp_path / "cap"), target=gw.url, out=str(tmp_path / "run"), speed=200
            ),
            install_signals=False,
        )
    assert r.run["counts"]["ok"] == 60
    import pyarrow.parquet as pq

    res = pq.read_table(
        tmp_path / "run" / "results.parquet", columns=["seq", "intended_ns"]
    ).to_pydict()
    intended = [t for _, t in sorted(zip(res["seq"], res["intended_ns"], strict=True))]
    want = [(t - src[0]) / 200 for t in src]
    assert [t - intended[0] for t in intended] == pytest.approx(want, abs=2)
