"""Response diff: replayed responses against the recording (status, finish_reason, tokens,
bodies of plain responses, stream shape) and two targets against each other."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from captures.testing import T0_NS, chat_record, http_record, write_capture
from replay.api import run_replay
from replay.decide.diff import compare_sides
from replay.decide.pairs import decoded_hash
from replay.mock.config import Faults
from replay.mock.threaded import running_gateway
from replay.workload.replaying import ReplayOptions

CLI = [sys.executable, "-c", "import cli; cli.main()"]
MS = 1_000_000


def test_decoded_hash_undoes_the_content_encoding() -> None:
    import gzip
    import zlib

    plain = decoded_hash(b"hello", None)
    assert decoded_hash(gzip.compress(b"hello"), "gzip") == plain
    assert decoded_hash(zlib.compress(b"hello"), "deflate") == plain
    assert decoded_hash(b"not gzip", "gzip") is None
    assert decoded_hash(b"x", "br") is None  # not decodable here: not compared


def test_compare_sides_counts_by_table() -> None:
    def side(
        status: str = "200",
        fin: str | None = "stop",
        tok: int | None = 8,
        body: str | None = None,
        streamed: bool = False,
        ttft: int | None = None,
        events: int | None = None,
        answer: str | None = None,
    ) -> dict[str, object]:
        return {
            "status": status,
            "api": "chat",
            "finish_reason": fin,
            "tokens": tok,
            "body": body,
            "answer": answer,
            "streamed": streamed,
            "ttft_us": ttft,
            "events": events,
            "gap_us": None,
        }

    pairs = [
        (side(body="a"), side(body="a"), 0),  # equal
        (side(body="a"), side(body="b"), 1),  # body differs
        (side(), side(status="503", fin=None, tok=None), 2),  # shed
        (side(fin="stop", tok=8), side(fin="length", tok=4), 3),
        (side(streamed=True, ttft=100, events=10), side(streamed=True, ttft=200, events=12), 4),
        (side(answer="x", body="a"), side(answer="x", body="b"), 5),  # fresh ids, same answer
        (side(answer="x"), side(answer="y"), 6),
    ]
    c = compare_sides("x", pairs, examples=10)
    assert c["pairs"] == 7
    assert c["verdicts"] == {"identical": 1, "equivalent": 2, "different": 4}
    assert c["differences"] == {
        "body": 1,
        "status": 1,
        "finish_reason": 1,
        "tokens": 1,
        "answer": 1,
    }
    assert c["answer"] == {"compared": 2, "equal": 1} and c["apis"] == {"chat": 7}
    assert c["status"] == {"same": 6, "different": 1, "transitions": {"200->503": 1}}
    assert c["finish_reason"]["different"] == 1 and c["finish_reason"]["transitions"] == {
        "stop->length": 1
    }
    assert (
        c["tokens"]["compared"] == 6
        and c["tokens"]["equal"] == 5
        and round(c["tokens"]["mean_delta"], 3) == round(-4 / 6, 3)
    )
    assert c["body"] == {"equal": 1, "different": 2, "not_comparable": 2}
    assert c["stream"]["compared"] == 1 and c["stream"]["ttft_ratio"]["p50"] == 2.0
    assert c["stream"]["event_delta"]["p50"] == 2
    assert [e["seq"] for e in c["examples"]] == [1, 2, 3, 6]


def _capture(tmp_path: Path) -> Path:
    recs = []
    t = T0_NS
    for i in range(6):  # plain GETs: the mock answers size=32 with 32 x "x"
        body = b"x" * 32 if i < 4 else b"y" * 32  # the last two "changed" since the recording
        recs.append(http_record(start_ns=t, path="/echo", query="size=32", resp_body=body))
        t += 5 * MS
    for _ in range(6):  # streamed chats recorded with 8 tokens, "stop"; replayed capped at 4
        recs.append(chat_record(start_ns=t, stream=True, max_tokens=4, completion_tokens=8))
        t += 5 * MS
    return write_capture(tmp_path / "cap", recs)


def test_diff_against_the_recording_and_between_targets(tmp_path: Path) -> None:
    cap = _capture(tmp_path)
    with (
        running_gateway(default_profile="instant") as good,
        running_gateway(
            default_profile="instant", faults=Faults(error_rate=1.0, error_status=503)
        ) as bad,
    ):
        run_replay(
            ReplayOptions(
                capture=str(cap),
                target=[f"good={good.url}", f"bad={bad.url}"],
                out=str(tmp_path / "run"),
                speed=2,
            ),
            install_signals=False,
        )
    p = subprocess.run(
        [*CLI, "diff", str(tmp_path / "run"), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    by = {c["name"]: c for c in doc["comparisons"]}
    assert set(by) == {"recording -> good", "recording -> bad", "good -> bad"}
    rec = by["recording -> good"]
    assert rec["pairs"] == 12 and rec["status"]["different"] == 0
    assert rec["body"] == {"equal": 4, "different": 2, "not_comparable": 0}
    assert rec["finish_reason"] == {
        "compared": 6,
        "different": 6,
        "transitions": {"stop->length": 6},
    }
    assert rec["tokens"]["compared"] == 6 and rec["tokens"]["mean_delta"] == -4
    assert rec["stream"]["compared"] == 6
    pair = by["good -> bad"]
    assert pair["pairs"] == 12
    assert pair["status"]["transitions"] == {"200->503": 6}  # the chats; echo has no faults
    assert pair["body"]["equal"] == 6 and pair["body"]["different"] == 0
    text = subprocess.run(
        [*CLI, "diff", str(tmp_path / "run"), "--fail-on", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 1 and "good -> bad: 6 status differences" in text.stderr
    assert "== recording -> good" in text.stdout and "e.g. seq" in text.stdout
    bad_arg = subprocess.run(
        [*CLI, "diff", str(tmp_path / "run"), "--fail-on", "colour"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_arg.returncode == 2 and "unknown 'colour'" in bad_arg.stderr
    # without the capture: recorded bodies cannot be compared, and the output says why
    moved = tmp_path / "moved"
    cap.rename(moved)
    p = subprocess.run(
        [*CLI, "diff", str(tmp_path / "run"), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc = json.loads(p.stdout)
    assert "capture not found" in doc["note"]
    assert doc["comparisons"][0]["body"]["not_comparable"] == 6
    p = subprocess.run(
        [*CLI, "diff", str(tmp_path / "run"), "--capture", str(moved), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(p.stdout)["comparisons"][0]["body"]["equal"] == 4


@pytest.mark.parametrize("gzip_on", [True])
def test_gzip_bodies_hash_as_decoded(tmp_path: Path, gzip_on: bool) -> None:
    import gzip

    recs = [
        http_record(
            start_ns=T0_NS + i * MS,
            path="/echo",
            query="size=2000&gzip=1",
            resp_body=gzip.compress(b"x" * 2000),
        )
        for i in range(3)
    ]
    for r in recs:
        r["resp_content_encoding"] = "gzip"
    cap = write_capture(tmp_path / "cap", recs)
    with running_gateway(default_profile="instant") as gw:
        run_replay(
            ReplayOptions(capture=str(cap), target=gw.url, out=str(tmp_path / "run"), speed=5),
            install_signals=False,
        )
    p = subprocess.run(
        [*CLI, "diff", str(tmp_path / "run"), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(p.stdout)["comparisons"][0]["body"]["equal"] == 3
