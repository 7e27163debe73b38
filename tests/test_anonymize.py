"""`loadtape anonymize`: no original text or identifier survives anywhere in the new capture
(every file, every column, compressed bodies decoded), while timing, structure, sizes and token
usage survive well enough for the result to replay like the original."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from captures import codec
from captures.anonymize import anonymize
from captures.errors import UserError
from captures.protocols import CHAT, read_response
from captures.protocols.base import Answer
from captures.reader import Capture
from captures.testing import T0_NS, chat_record, http_record, write_capture
from replay.api import run_replay
from replay.mock.threaded import running_gateway
from replay.workload.replaying import ReplayOptions

LOADTAPE = [sys.executable, "-c", "import cli; cli.main()"]
CODED = ("gzip", "br", "zstd")  # the codings of some answers
# Words that occur nowhere in filler vocabularies, so finding one means it leaked.
SECRETS = [
    "zanzibarquokka",
    "plutoniumwaffle",
    "Xyloquent",
    "acmewidgetcorp",
    "alice-8842",
    "sess-aa91f",
    "conn-secret-77",
    "mordorpayroll",
    "grizzlyledger",
    "hushhushtoken",
]


def answer(rid: str, words: list[str], model: str) -> Answer:
    return Answer(rid=rid, model=model, created=0, text=[" " + w for w in words], prompt_tokens=9)


def sse(words: list[str], model: str) -> bytes:
    return b"".join(
        e for _, e in CHAT.render_stream(answer("chatcmpl-zanzibarquokka", words, model))
    )


def records() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(30):
        r = chat_record(
            start_ns=T0_NS + i * 37_000_000,
            model="large" if i % 3 else "small",
            stream=i % 2 == 0,
            prompt=f"Please summarise the zanzibarquokka report for acmewidgetcorp, item {i}, mordorpayroll",
            user="alice-8842",
            session_key="sess-aa91f",
            conn_id="conn-secret-77",
            extra_headers=[
                ("X-Customer", "acmewidgetcorp"),
                ("Authorization", "[REDACTED:authorization:1a2b3c4d]"),
            ],
        )
        words = ["plutoniumwaffle", "Xyloquent", "grizzlyledger"] * 3
        if r["stream"]:
            r["resp_body"] = sse(words, str(r["model"]))
            r["resp_headers"] = [("Content-Type", "text/event-stream")]
        else:
            body = CHAT.render_body(answer("chatcmpl-hushhushtoken", words, str(r["model"])))
            if i % 4 == 1:  # a coded body (gzip, br, zstd): the scan must decode it
                coding = CODED[i // 4 % len(CODED)]
                r["resp_body"] = codec.encode(body, coding)
                r["resp_content_encoding"] = coding
                r["resp_headers"] = [
                    ("Content-Type", "application/json"),
                    ("Content-Encoding", coding),
                ]
            else:
                r["resp_body"] = body
        r["resp_body_size"] = len(r["resp_body"])  # type: ignore[arg-type]
        out.append(r)
    out.append(
        http_record(
            start_ns=T0_NS + 2 * 10**9,
            path="/v1/models",
            query="customer=acmewidgetcorp&k=grizzlyledger",
        )
    )
    failed = http_record(start_ns=T0_NS + 3 * 10**9, status=None, error_kind="upstream_reset")
    failed["error_message"] = "peer hushhushtoken reset by mordorpayroll"
    out.append(failed)
    return out


def everything_in(root: Path) -> str:
    """Every file under root as text: Parquet decoded column by column (bodies gunzipped),
    anything else as raw bytes."""
    parts: list[str] = []
    for f in sorted(root.rglob("*")):
        if not f.is_file():
            continue
        if f.suffix == ".parquet":
            for row in pq.read_table(f).to_pylist():
                for k, v in row.items():
                    if isinstance(v, bytes):
                        for coding in CODED:
                            v = codec.decode(v, coding) or v
                        v = v.decode("utf-8", "replace")
                    parts.append(f"{k}={v!r}")
        else:
            parts.append(f.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def test_no_original_text_or_identifier_survives(tmp_path: Path) -> None:
    src = write_capture(tmp_path / "orig", records())
    assert all(s.lower() in everything_in(src).lower() for s in SECRETS)  # the scan can see them
    p = subprocess.run(
        [*LOADTAPE, "anonymize", str(src), "--out", str(tmp_path / "anon")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0 and "anonymized 32 requests" in p.stdout, p.stderr
    dump = everything_in(tmp_path / "anon").lower()
    leaked = [s for s in SECRETS if s.lower() in dump]
    assert not leaked, leaked
    assert "[redacted:authorization:1a2b3c4d]" in dump  # already-redacted markers stay


def test_structure_timing_sizes_and_usage_survive(tmp_path: Path) -> None:
    src = write_capture(tmp_path / "orig", records())
    anonymize(src, tmp_path / "anon")
    a = Capture(src).records()
    b = Capture(tmp_path / "anon").records()
    assert len(a) == len(b) == 32
    for x, y in zip(a, b, strict=True):
        for col in (
            "req_start_ns",
            "resp_end_ns",
            "chunk_offsets_us",
            "status",
            "model",
            "stream",
            "max_tokens",
            "message_count",
            "prompt_tokens",
            "completion_tokens",
            "method",
            "path",
            "error_kind",
            "finish_reason",
        ):
            assert x[col] == y[col], col
        if x["req_body_size"]:
            assert 0.5 < y["req_body_size"] / x["req_body_size"] < 1.6  # type: ignore[operator]
        if x["model"]:
            req = json.loads(y["req_body"])  # type: ignore[arg-type]
            assert req["model"] == x["model"] and req["messages"][0]["role"] == "user"
            assert req["user"].startswith("anon-user-")
            ct = "text/event-stream" if x["stream"] else "application/json"
            before = read_response(CHAT, [x["resp_body"]], ct, x["resp_content_encoding"]).fields
            after = read_response(CHAT, [y["resp_body"]], ct, y["resp_content_encoding"]).fields
            assert after.response_id != before.response_id  # ids are pseudonyms ...
            assert after.response_id and after.response_id.startswith("anon-id-")
            assert after.answer != before.answer  # the text is filler now ...
            after.response_id, after.answer = before.response_id, before.answer
            # ... and the rest is as it was
            assert after == before and after.completion_tokens == 9
    # one capture's identifiers map consistently: the same user, the same pseudonym
    assert (
        len({r["user"] for r in b if r["user"]}) == 1
        and len({r["session_key"] for r in b if r["session_key"]}) == 1
    )
    # two anonymizations cannot be linked: a fresh key each time
    anonymize(src, tmp_path / "anon2")
    c = Capture(tmp_path / "anon2").records()
    assert {r["user"] for r in b if r["user"]} != {r["user"] for r in c if r["user"]}


def test_the_anonymized_capture_replays_like_the_original(tmp_path: Path) -> None:
    src = write_capture(tmp_path / "orig", [r for r in records() if r.get("model")])
    anonymize(src, tmp_path / "anon")
    with running_gateway(default_profile="instant") as gw:
        ra = run_replay(
            ReplayOptions(capture=str(src), target=gw.url, out=str(tmp_path / "ra"), speed=4),
            install_signals=False,
        )
        rb = run_replay(
            ReplayOptions(
                capture=str(tmp_path / "anon"), target=gw.url, out=str(tmp_path / "rb"), speed=4
            ),
            install_signals=False,
        )
    assert ra.run["counts"]["ok"] == rb.run["counts"]["ok"] == 30
    ta = pq.read_table(tmp_path / "ra" / "results.parquet").sort_by("seq").to_pydict()
    tb = pq.read_table(tmp_path / "rb" / "results.parquet").sort_by("seq").to_pydict()
    assert (
        ta["intended_ns"][-1] - ta["intended_ns"][0] == tb["intended_ns"][-1] - tb["intended_ns"][0]
    )
    assert ta["model"] == tb["model"]


def test_refuses_to_overwrite_and_reports_a_missing_capture(tmp_path: Path) -> None:
    src = write_capture(tmp_path / "orig", records()[:3])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        anonymize(src, tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    p = subprocess.run(
        [*LOADTAPE, "anonymize", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        p.returncode == 2
        and len(p.stderr.strip().splitlines()) == 1
        and "Traceback" not in p.stderr
    ), p.stderr
